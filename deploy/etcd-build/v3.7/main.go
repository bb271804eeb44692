// Command etcd is etcd v3.7 built from its Go modules as one multi-call
// binary: started as "etcdctl" it is etcdctl, as "etcdutl" it is etcdutl, and
// under any other name it is the etcd server. deploy/install-etcd.sh installs
// it under all three names. The etcd version is the one pinned in go.mod.
package main

import (
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/etcdctl/v3/ctlv3"
	"go.etcd.io/etcd/etcdutl/v3/etcdutl"
	"go.etcd.io/etcd/pkg/v3/cobrautl"
	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	switch filepath.Base(os.Args[0]) {
	case "etcdctl":
		ctlv3.MustStart() // v3.6 dropped the v2 API and ETCDCTL_API
	case "etcdutl":
		etcdutlMain()
	default:
		etcdmain.Main(os.Args)
	}
}

var outputFormats = []string{"fields", "json", "protobuf", "simple", "table"}

// etcdutlMain assembles the etcdutl root command of v3.7 (its own main
// package cannot be imported) from the exported subcommands.
func etcdutlMain() {
	cobra.EnablePrefixMatching = true
	root := &cobra.Command{
		Use:        "etcdutl",
		Short:      "An administrative command line tool for etcd3.",
		SuggestFor: []string{"etcdutl"},
	}
	root.PersistentFlags().DurationVar(&etcdutl.FlockTimeout, "timeout", 10*time.Second,
		"time to wait to obtain a file lock on db file, 0 to block indefinitely")
	root.PersistentFlags().StringVarP(&etcdutl.OutputFormat, "write-out", "w", "simple",
		"set the output format (fields, json, protobuf, simple, table)")
	root.RegisterFlagCompletionFunc("write-out", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return outputFormats, cobra.ShellCompDirectiveDefault
	})
	root.AddCommand(
		etcdutl.NewDefragCommand(),
		etcdutl.NewSnapshotCommand(),
		etcdutl.NewHashKVCommand(),
		etcdutl.NewVersionCommand(),
		etcdutl.NewCompletionCommand(),
		etcdutl.NewMigrateCommand(),
	)
	root.SetHelpTemplate(`{{.UsageString}}`)
	if err := root.Execute(); err != nil {
		cobrautl.ExitWithError(cobrautl.ExitError, err)
	}
}
