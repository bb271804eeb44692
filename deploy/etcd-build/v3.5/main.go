// Command etcd is etcd v3.5 built from its Go modules as one multi-call
// binary: started as "etcdctl" it is etcdctl, as "etcdutl" it is etcdutl, and
// under any other name it is the etcd server. deploy/install-etcd.sh installs
// it under all three names. The etcd version is the one pinned in go.mod.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/etcdctl/v3/ctlv2"
	"go.etcd.io/etcd/etcdctl/v3/ctlv3"
	"go.etcd.io/etcd/etcdutl/v3/etcdutl"
	"go.etcd.io/etcd/pkg/v3/cobrautl"
	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	switch filepath.Base(os.Args[0]) {
	case "etcdctl":
		etcdctl()
	case "etcdutl":
		etcdutlMain()
	default:
		etcdmain.Main(os.Args)
	}
}

// etcdctl behaves like the etcdctl of v3.5: ETCDCTL_API picks the v3 (default)
// or the v2 command set, and is cleared before flags are parsed.
func etcdctl() {
	api := os.Getenv("ETCDCTL_API")
	os.Unsetenv("ETCDCTL_API")
	switch api {
	case "", "3":
		ctlv3.MustStart()
	case "2":
		ctlv2.MustStart()
	default:
		fmt.Fprintf(os.Stderr, "unsupported API version: %v\n", api)
		os.Exit(1)
	}
}

// etcdutlMain assembles the etcdutl root command of v3.5 (its own main
// package cannot be imported) from the exported subcommands.
func etcdutlMain() {
	cobra.EnablePrefixMatching = true
	root := &cobra.Command{
		Use:        "etcdutl",
		Short:      "An administrative command line tool for etcd3.",
		SuggestFor: []string{"etcdutl"},
	}
	root.PersistentFlags().StringVarP(&etcdutl.OutputFormat, "write-out", "w", "simple",
		"set the output format (fields, json, protobuf, simple, table)")
	root.AddCommand(
		etcdutl.NewBackupCommand(),
		etcdutl.NewDefragCommand(),
		etcdutl.NewSnapshotCommand(),
		etcdutl.NewVersionCommand(),
		etcdutl.NewCheckCommand(),
	)
	root.SetHelpTemplate(`{{.UsageString}}`)
	if err := root.Execute(); err != nil {
		cobrautl.ExitWithError(cobrautl.ExitError, err)
	}
}
