//! `etcd-manager-ctl`: the operator's view of the backup store, with
//! upstream's commands and flags (Go-style single-dash flags work too):
//!
//! ```text
//! etcd-manager-ctl -backup-store=file:///tmp/etcd-manager/backups/test get
//! etcd-manager-ctl -backup-store=... -member-count=3 -etcd-version=3.5.30 configure-cluster
//! etcd-manager-ctl -backup-store=... list-backups
//! etcd-manager-ctl -backup-store=... list-commands
//! etcd-manager-ctl -backup-store=... delete-command <name>
//! etcd-manager-ctl -backup-store=... restore-backup <backup>
//! ```

use anyhow::{Context, bail};
use backup::{BackupStore, ClusterSpec, Command, RestoreBackupCommand};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use etcd_manager::backups::pitr::ReplayTo;

/// Reads and changes the desired state of an etcd cluster managed by etcd-manager.
#[derive(Debug, Parser)]
#[command(name = "etcd-manager-ctl", version = etcd_manager::VERSION, about, args_override_self = true)]
struct CtlArgs {
    /// The backup store: file:///abs/path, s3://bucket/prefix, gs://bucket/prefix.
    #[arg(long, env = "ETCD_MANAGER_BACKUP_STORE", global = true)]
    backup_store: Option<String>,

    /// Number of etcd members (configure-cluster): 1, 3 or 5.
    #[arg(long, global = true)]
    member_count: Option<i32>,

    /// etcd version (configure-cluster), e.g. 3.5.30.
    #[arg(long, global = true)]
    etcd_version: Option<String>,

    /// Accept an etcd version that is not installed on this machine (when the ctl runs elsewhere than the masters).
    #[arg(long, global = true)]
    allow_missing_version: bool,

    /// Extra folder(s) to look for etcd binaries in, before /opt/etcd-v<version>/.
    #[arg(
        long,
        env = "ETCD_MANAGER_ETCD_BIN_DIR",
        value_delimiter = ',',
        global = true
    )]
    etcd_bin_dir: Vec<std::path::PathBuf>,

    /// S3 endpoint for S3-compatible stores, e.g. http://127.0.0.1:5000.
    #[arg(long, env = "ETCD_MANAGER_S3_ENDPOINT", global = true)]
    s3_endpoint: Option<String>,

    /// S3 region.
    #[arg(long, env = "ETCD_MANAGER_S3_REGION", global = true)]
    s3_region: Option<String>,

    /// S3 server-side encryption of what the ctl writes: AES256 (SSE-S3), aws:kms or aws:kms:dsse (SSE-KMS) [default: the bucket's].
    #[arg(long, env = "ETCD_MANAGER_S3_SERVER_SIDE_ENCRYPTION", global = true)]
    s3_server_side_encryption: Option<String>,

    /// The KMS key id, alias or ARN of SSE-KMS [default: the account's aws/s3 key].
    #[arg(long, env = "ETCD_MANAGER_S3_SSE_KMS_KEY_ID", global = true)]
    s3_sse_kms_key_id: Option<String>,

    /// Encrypt what the ctl writes (a replay's backup) with age to the
    /// public keys in this file [default: a replay uses its base backup's].
    #[arg(
        long,
        env = "ETCD_MANAGER_BACKUP_ENCRYPTION_RECIPIENTS_FILE",
        global = true
    )]
    backup_encryption_recipients_file: Option<std::path::PathBuf>,

    /// The age identity that decrypts encrypted backups (restore-backup's
    /// replay, verify-backup).
    #[arg(
        long,
        env = "ETCD_MANAGER_BACKUP_ENCRYPTION_IDENTITY_FILE",
        global = true
    )]
    backup_encryption_identity_file: Option<std::path::PathBuf>,

    /// Folder of the CAs (init-pki, issue-client-cert), as the manager's --pki-dir.
    #[arg(
        long,
        env = "ETCD_MANAGER_PKI_DIR",
        default_value = "/etc/kubernetes/pki/etcd-manager",
        global = true
    )]
    pki_dir: std::path::PathBuf,

    /// Output: text (upstream's format) or json.
    #[arg(short = 'o', long, default_value = "text", global = true)]
    output: Output,

    /// The command; `get` when none is given (as upstream).
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
enum Output {
    Text,
    Json,
    /// list-backups with age, etcd version, size and checksum.
    Wide,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print the cluster spec.
    Get,
    /// Set the cluster spec (-member-count, -etcd-version); the leader picks it up without a restart.
    ConfigureCluster,
    /// List backups, oldest first.
    ListBackups,
    /// List queued commands.
    ListCommands,
    /// Delete the queued restore command(s) for a backup (upstream's meaning), or a command by its folder name.
    DeleteCommand { name: String },
    /// Queue a restore of the named backup. When the backup has continuous-backup
    /// segments, they are replayed first (here, with the backup's etcd version) into a
    /// new backup holding the latest state, or the state at -to-revision / -to-time,
    /// and that one is queued; -full-only restores the backup as it is.
    RestoreBackup {
        backup: String,
        /// Replay the segments up to and including this etcd revision.
        #[arg(long, conflicts_with_all = ["to_time", "full_only"])]
        to_revision: Option<i64>,
        /// Replay every change the leader saw at or before this time (RFC 3339, e.g.
        /// 2026-11-30T10:15:00Z).
        #[arg(long, conflicts_with = "full_only")]
        to_time: Option<String>,
        /// Restore the full backup alone, leaving its segments out (upstream's restore).
        #[arg(long)]
        full_only: bool,
        /// Where the replay's scratch folder goes (removed afterwards).
        #[arg(long, default_value_os_t = std::env::temp_dir())]
        scratch_dir: std::path::PathBuf,
    },
    /// Leader, epoch, members and their health, quarantine, last backup, queued commands and what the leader waits for.
    Status,
    /// Ask the leader for a backup now; waits until it is listed and prints its name.
    BackupNow {
        /// How long to wait for the backup to appear.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Ask the leader to defragment every voter (followers first, the raft leader last,
    /// leadership moved away first), or one member; waits until it is done.
    Defrag {
        /// The member to defragment (its name, as `status` shows it); every voter when absent.
        member: Option<String>,
        /// How long to wait for the leader to finish.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Let the leader rebuild a cluster that lost its quorum (a majority of voters gone
    /// for good): from the surviving member furthest ahead, or the newest backup when
    /// that is ahead of every survivor, as a one-member cluster that then grows back to
    /// the spec. Prints the leader's plan first; waits until the restore is queued.
    RecoverQuorum {
        /// How long to wait for the leader to queue it.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Run a restore drill of a backup here and now: download it (checksum verified),
    /// restore it into a scratch folder, serve it with a throwaway etcd on 127.0.0.1
    /// (lowest CPU priority) and compare its HashKV with the cluster's at the backup's
    /// revision. The verdict is kept beside the backup (list-backups -o wide); exits
    /// non-zero unless the backup is verified or restored.
    VerifyBackup {
        /// The backup's name (list-backups).
        backup: String,
        /// Where the scratch folder goes (removed afterwards); needs room for three
        /// times the snapshot.
        #[arg(long, default_value_os_t = std::env::temp_dir())]
        scratch_dir: std::path::PathBuf,
        /// Have the managers run it instead (the leader hands it to the lowest other
        /// manager, within a minute); waits for the verdict.
        #[arg(long)]
        on_manager: bool,
        /// With --on-manager: how long to wait for the verdict.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Allow the leader to create a new EMPTY cluster although backups exist (after the
    /// created marker was lost and you do not want to restore).
    SeedNewCluster,
    /// Create the CAs the managers need in -pki-dir (etcd-manager-ca, etcd-peers-ca,
    /// etcd-clients-ca); existing ones are kept. Copy the folder to every master.
    InitPki,
    /// Write an etcd client certificate from etcd-clients-ca in -pki-dir into a folder
    /// (ca.crt, client.crt, client.key), for etcdctl and other clients.
    IssueClientCert {
        /// Folder to write into.
        out_dir: std::path::PathBuf,
        /// The certificate's common name.
        #[arg(long, default_value = "etcd-client")]
        name: String,
    },
    /// Make a key pair for encrypted backups (as age-keygen): the private
    /// key goes to a new file (mode 0600) for where restores run, and the
    /// public key line is printed for --backup-encryption-recipients-file.
    GenerateBackupKey {
        /// The identity file to create (an existing one is never replaced).
        out: std::path::PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cmd = CtlArgs::command();
    let argv = etcd_manager::cli::goflags::normalize(
        std::env::args_os(),
        &etcd_manager::cli::goflags::long_names(&cmd),
    );
    let args = match cmd
        .try_get_matches_from(argv)
        .and_then(|m| CtlArgs::from_arg_matches(&m))
    {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("etcd-manager-ctl: error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(out) => {
            print!("{out}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("etcd-manager-ctl: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[allow(clippy::disallowed_methods)] // the ctl stamps commands with the wall clock
fn wall_now() -> std::time::SystemTime {
    std::time::SystemTime::now()
}

fn json<T: serde::Serialize>(v: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(v)? + "\n")
}

/// Create whichever CAs are missing; a half-present pair is an error.
fn init_pki(dir: &std::path::Path) -> anyhow::Result<String> {
    use etcd_manager::platform::pki::{ALL_CAS, Ca};
    let mut out = String::new();
    for name in ALL_CAS {
        let crt = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        match (crt.exists(), key.exists()) {
            (true, true) => {
                Ca::load(dir, name, "--insecure / --etcd-insecure")
                    .with_context(|| format!("the existing {name} is not usable"))?;
                out += &format!("kept    {}\n", crt.display());
            }
            (false, false) => {
                Ca::generate(name, wall_now())?.write(dir)?;
                out += &format!("created {} and {name}.key\n", crt.display());
            }
            _ => bail!(
                "only one of {} and {} exists; restore the missing one or remove both to create a new CA",
                crt.display(),
                key.display()
            ),
        }
    }
    Ok(out)
}

fn generate_backup_key(out: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let now = chrono::DateTime::<chrono::Utc>::from(wall_now())
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (public, identity) = backup::crypt::generate_identity(&now);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("{} (an existing key file is never replaced)", out.display()))?;
    f.write_all(identity.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| out.display().to_string())?;
    eprintln!(
        "wrote the private key to {}: give it (--backup-encryption-identity-file) only to where restores and \
         drills run, and keep a copy away from the backups: without it no encrypted backup can be restored",
        out.display()
    );
    Ok(format!("{public}\n"))
}

fn issue_client_cert(
    pki_dir: &std::path::Path,
    out_dir: &std::path::Path,
    name: &str,
) -> anyhow::Result<String> {
    use etcd_manager::platform::pki::{CLIENTS_CA, Ca, Subject, write_issued};
    let ca = Ca::load(pki_dir, CLIENTS_CA, "--etcd-insecure")?;
    let issued = ca.issue(
        &Subject {
            common_name: name.to_string(),
            ..Subject::default()
        },
        wall_now(),
    )?;
    write_issued(out_dir, "client", &ca, &issued)?;
    let p = |f: &str| out_dir.join(f).display().to_string();
    Ok(format!(
        "etcdctl --cacert={} --cert={} --key={} --endpoints=https://<member>:4001 ...\n",
        p("ca.crt"),
        p("client.crt"),
        p("client.key")
    ))
}

async fn run(a: CtlArgs) -> anyhow::Result<String> {
    match a.command.as_ref() {
        Some(Cmd::InitPki) => return init_pki(&a.pki_dir),
        Some(Cmd::IssueClientCert { out_dir, name }) => {
            return issue_client_cert(&a.pki_dir, out_dir, name);
        }
        Some(Cmd::GenerateBackupKey { out }) => return generate_backup_key(out),
        _ => {}
    }
    let (store, url) = open_store(&a).await?;
    match a.command.as_ref().unwrap_or(&Cmd::Get) {
        Cmd::Get => get(&store, &url, a.output).await,
        Cmd::ConfigureCluster => configure_cluster(&store, &a).await,
        Cmd::ListBackups => list_backups(&store, a.output).await,
        Cmd::ListCommands => list_commands(&store, a.output).await,
        Cmd::DeleteCommand { name } => delete_command(&store, name).await,
        Cmd::Status => status(&store, a.output).await,
        Cmd::BackupNow { timeout } => backup_now(&store, *timeout).await,
        Cmd::Defrag { member, timeout } => defrag(&store, member.as_deref(), *timeout).await,
        Cmd::RecoverQuorum { timeout } => recover_quorum(&store, *timeout).await,
        // Answered above, before a store is needed.
        Cmd::InitPki => init_pki(&a.pki_dir),
        Cmd::IssueClientCert { out_dir, name } => issue_client_cert(&a.pki_dir, out_dir, name),
        Cmd::GenerateBackupKey { out } => generate_backup_key(out),
        Cmd::VerifyBackup {
            backup,
            scratch_dir,
            on_manager,
            timeout,
        } => {
            check_backup_listed(&store, &url, backup).await?;
            let record = if *on_manager {
                drill_on_manager(&store, backup, *timeout).await?
            } else {
                drill_here(&store, backup, &a.etcd_bin_dir, scratch_dir).await?
            };
            drill_verdict(backup, &record, a.output)
        }
        Cmd::SeedNewCluster => seed_new_cluster(&store).await,
        Cmd::RestoreBackup {
            backup,
            to_revision,
            to_time,
            full_only,
            scratch_dir,
        } => {
            check_backup_listed(&store, &url, backup).await?;
            let to = replay_target(*to_revision, to_time.as_deref())?;
            let (chosen, replay_note) = if *full_only {
                (backup.clone(), String::new())
            } else {
                replay_first(&store, backup, to, &a.etcd_bin_dir, scratch_dir).await?
            };
            let queued = queue_restore(&store, &chosen).await?;
            Ok(format!("{replay_note}{queued}"))
        }
    }
}

/// The store `-backup-store` names, with the store and encryption flags
/// (kops' S3_* variables where no flag says otherwise, as the manager);
/// and its URL.
async fn open_store(a: &CtlArgs) -> anyhow::Result<(BackupStore, String)> {
    let Some(url) = a.backup_store.clone() else {
        bail!(
            "--backup-store is required, e.g. -backup-store=file:///tmp/etcd-manager/backups/test"
        );
    };
    let mut opts = etcd_manager::cli::config::s3_store_options(
        a.s3_endpoint.clone(),
        a.s3_region.clone(),
        a.s3_server_side_encryption.clone(),
        a.s3_sse_kms_key_id.clone(),
    );
    backup::resolve_s3_region(&url, &mut opts).await;
    let encryption = etcd_manager::cli::config::encryption_flags(
        a.backup_encryption_recipients_file.as_deref(),
        a.backup_encryption_identity_file.as_deref(),
    )?;
    let store = BackupStore::open(&url, &opts)
        .context("--backup-store")?
        .with_encryption(encryption);
    Ok((store, url))
}

/// `get`: the cluster spec.
async fn get(store: &BackupStore, url: &str, output: Output) -> anyhow::Result<String> {
    let spec = store
        .read_spec()
        .await?
        .with_context(|| format!("no cluster spec in {url}; create one with configure-cluster"))?;
    match output {
        Output::Text | Output::Wide => Ok(format!("{}\n", backup::spec_upstream_text(&spec))),
        Output::Json => json(&spec),
    }
}

/// `configure-cluster`: the flags over the current spec.
async fn configure_cluster(store: &BackupStore, a: &CtlArgs) -> anyhow::Result<String> {
    let current = store.read_spec().await?;
    let spec = new_spec(a, current.as_ref())?;
    store.write_spec(&spec).await?;
    Ok(format!(
        "set cluster spec to {}\n",
        backup::spec_upstream_text(&spec)
    ))
}

/// `list-backups`: the names, or a table with `-o wide`.
async fn list_backups(store: &BackupStore, output: Output) -> anyhow::Result<String> {
    let names = store.list_backups().await?;
    match output {
        Output::Text => Ok(names.iter().map(|n| format!("{n}\n")).collect()),
        Output::Json => json(&names),
        Output::Wide => list_backups_wide(store, &names).await,
    }
}

/// `list-commands`: the queue, and the malformed commands skipped.
async fn list_commands(store: &BackupStore, output: Output) -> anyhow::Result<String> {
    let (cmds, malformed) = store.list_commands_reporting().await?;
    match output {
        Output::Text | Output::Wide => Ok(cmds
            .iter()
            .map(|c| format!("{}\n", c.command.to_upstream_text()))
            .chain(malformed.iter().map(|f| {
                format!(
                    "# skipped {}: {} (delete-command removes it)\n",
                    f.path, f.reason
                )
            }))
            .collect()),
        Output::Json => {
            let v: Vec<_> = cmds
                .iter()
                .map(|c| serde_json::json!({"name": c.name, "command": c.command}))
                .collect();
            json(&v)
        }
    }
}

/// `delete-command`: the restore commands of a backup, or a command (also
/// a malformed one) by its folder name.
async fn delete_command(store: &BackupStore, name: &str) -> anyhow::Result<String> {
    let (cmds, malformed) = store.list_commands_reporting().await?;
    let broken: Vec<&str> = malformed
        .iter()
        .filter_map(|f| {
            let mut parts = f.path.rsplit('/');
            let _file = parts.next()?;
            let folder = parts.next()?;
            (parts.next() == Some("control") && folder == name).then_some(folder)
        })
        .collect();
    let targets: Vec<&str> = cmds
        .iter()
        .filter(|c| {
            c.name == name
                || c.command
                    .restore_backup
                    .as_ref()
                    .is_some_and(|r| r.backup == name)
        })
        .map(|c| c.name.as_str())
        .chain(broken)
        .collect();
    if targets.is_empty() {
        bail!("no queued command for '{name}'; list-commands shows the queue");
    }
    let mut out = String::new();
    for t in targets {
        store.delete_command(t).await?;
        out += &format!("deleted command {t}\n");
    }
    Ok(out)
}

/// A valid backup name that the store lists.
async fn check_backup_listed(store: &BackupStore, url: &str, backup: &str) -> anyhow::Result<()> {
    backup::check_backup_name(backup)?;
    if !store.list_backups().await?.iter().any(|b| b == backup) {
        bail!("backup '{backup}' is not in {url}; list-backups shows the available names");
    }
    Ok(())
}

/// `verify-backup` here: a drill in a scratch folder of its own, removed
/// afterwards.
async fn drill_here(
    store: &BackupStore,
    backup: &str,
    bin_dirs: &[std::path::PathBuf],
    scratch_dir: &std::path::Path,
) -> anyhow::Result<backup::DrillRecord> {
    let settings = etcd_manager::backups::drill::DrillSettings {
        bin_dirs: bin_dirs.to_vec(),
        scratch_root: scratch_dir.join(format!("etcd-manager-drill-{}", std::process::id())),
        by: "etcd-manager-ctl".into(),
        clock: std::sync::Arc::new(etcd_manager::clock::SystemClock),
    };
    let record = etcd_manager::backups::drill::verify_backup(store, backup, &settings).await;
    let _ = std::fs::remove_dir_all(&settings.scratch_root);
    Ok(record?)
}

/// The drill's verdict as output; an error unless the backup is verified
/// or restored.
fn drill_verdict(
    backup: &str,
    record: &backup::DrillRecord,
    output: Output,
) -> anyhow::Result<String> {
    let text = match output {
        Output::Json => json(record)?,
        Output::Text | Output::Wide => {
            let mut t = format!(
                "backup {backup}: {} in {:.1} s",
                record.verdict.as_str(),
                record.millis as f64 / 1000.0
            );
            if let Some(f) = record.found {
                t += &format!(
                    " (etcd {}, HashKV {:#010x} at revision {})",
                    record.etcd_version, f.hash, f.revision
                );
            }
            if !record.reason.is_empty() {
                t += &format!(": {}", record.reason);
            }
            t + "\n"
        }
    };
    match record.verdict {
        backup::DrillVerdict::Verified | backup::DrillVerdict::Restored => Ok(text),
        _ => bail!("{}", text.trim_end()),
    }
}

/// `seed-new-cluster`: allow an empty cluster although backups exist.
async fn seed_new_cluster(store: &BackupStore) -> anyhow::Result<String> {
    if store.read_spec().await?.is_none() {
        bail!("no cluster spec yet; run configure-cluster first");
    }
    if store.read_created().await?.is_some() {
        bail!(
            "control/etcd-cluster-created exists: a cluster was created here; restore a backup instead"
        );
    }
    store
        .write_manager_file(backup::layout::ALLOW_NEW_CLUSTER_FILE, b"{}".to_vec())
        .await?;
    Ok(
        "the leader may now create a new EMPTY cluster although backups exist; \
        existing backups are kept and can still be restored\n"
            .to_string(),
    )
}

/// Where `-to-revision` or `-to-time` stop a replay.
fn replay_target(to_revision: Option<i64>, to_time: Option<&str>) -> anyhow::Result<ReplayTo> {
    Ok(match (to_revision, to_time) {
        (Some(r), _) => ReplayTo::Revision(r),
        (None, Some(t)) => ReplayTo::Time(
            chrono::DateTime::parse_from_rfc3339(t)
                .with_context(|| {
                    format!("-to-time {t}: not an RFC 3339 time such as 2026-11-30T10:15:00Z")
                })?
                .timestamp_millis(),
        ),
        (None, None) => ReplayTo::Latest,
    })
}

/// Replay backup `name`'s continuous-backup segments (if it has any, or a
/// point was asked for) into a new backup: the backup to restore, and
/// what was replayed (empty when nothing was).
async fn replay_first(
    store: &BackupStore,
    name: &str,
    to: ReplayTo,
    bin_dirs: &[std::path::PathBuf],
    scratch_dir: &std::path::Path,
) -> anyhow::Result<(String, String)> {
    let Some(plan) = etcd_manager::backups::pitr::plan(store, name, to)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
    else {
        return Ok((name.to_string(), String::new()));
    };
    if plan.unusable > 0 {
        eprintln!(
            "warning: {} segment(s) of backup {name} come after a hole in its chain (revision {}) and are left out",
            plan.unusable,
            plan.chain_end + 1
        );
    }
    let settings = etcd_manager::backups::pitr::ReplaySettings {
        bin_dirs: bin_dirs.to_vec(),
        scratch: scratch_dir.join(format!("etcd-manager-replay-{}", std::process::id())),
        clock: std::sync::Arc::new(etcd_manager::clock::SystemClock),
    };
    let done = etcd_manager::backups::pitr::replay(store, &plan, &settings)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}; nothing was queued (-full-only restores the backup without its segments)"
            )
        })?;
    let note = format!(
        "replayed {} revision(s) of backup {name}'s continuous backup onto its snapshot (revision {}): \
         new backup {} at revision {} (HashKV {:#010x})\n",
        done.replayed, done.snapshot_revision, done.name, done.revision, done.hash.hash
    );
    Ok((done.name, note))
}

/// Queue upstream's restore-backup command for backup `name`, with the
/// store's spec (else the backup's).
async fn queue_restore(store: &BackupStore, name: &str) -> anyhow::Result<String> {
    let spec = match store.read_spec().await? {
        Some(s) => s,
        None => store
            .read_backup_info(name)
            .await?
            .cluster_spec
            .unwrap_or_default(),
    };
    let cmd = Command {
        timestamp: wall_now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0),
        restore_backup: Some(RestoreBackupCommand {
            cluster_spec: Some(spec),
            backup: name.to_string(),
        }),
    };
    store.add_command(&cmd, wall_now()).await?;
    Ok(format!(
        "added restore-backup command: {}\n",
        cmd.to_upstream_text()
    ))
}

/// The spec configure-cluster writes: flags over the current spec, validated.
fn new_spec(a: &CtlArgs, current: Option<&ClusterSpec>) -> anyhow::Result<ClusterSpec> {
    let member_count = match (a.member_count, current) {
        (Some(n), _) => n,
        (None, Some(c)) => c.member_count,
        (None, None) => bail!("-member-count is required when no spec exists yet"),
    };
    let etcd_version = match (&a.etcd_version, current) {
        (Some(v), _) => v.trim_start_matches('v').to_string(),
        (None, Some(c)) => c.etcd_version.clone(),
        (None, None) => bail!("-etcd-version is required when no spec exists yet"),
    };
    let spec = ClusterSpec {
        member_count,
        etcd_version,
    };
    etcd_manager::controller::validate_spec(&spec).map_err(anyhow::Error::msg)?;
    if !a.allow_missing_version {
        let v: etcd::EtcdVersion = spec.etcd_version.parse()?;
        etcd::find_binaries(&v, &a.etcd_bin_dir).with_context(|| {
            format!(
                "etcd {} is not installed here; install it on every master (deploy/install-etcd.sh {}) \
                 or pass -allow-missing-version if this machine is not a master",
                spec.etcd_version, spec.etcd_version
            )
        })?;
    }
    Ok(spec)
}

/// What `status` shows, read from the store.
struct StatusFacts {
    /// Unix seconds.
    now: i64,
    report: Option<etcd_manager::status::ClusterStatus>,
    spec: Option<ClusterSpec>,
    backups: Vec<String>,
    /// The newest backup, its meta and side file when they read.
    last: Option<(
        String,
        Option<backup::BackupInfo>,
        Option<backup::BackupExtra>,
    )>,
    /// How far the newest backup's continuous backup reaches: its segments
    /// and the last revision of its chain.
    delta: Option<(usize, i64)>,
    commands: Vec<backup::StoredCommand>,
}

impl StatusFacts {
    async fn read(store: &BackupStore) -> anyhow::Result<StatusFacts> {
        use backup::layout::STATUS_FILE;
        let now = wall_now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let report = match store.read_manager_file(STATUS_FILE).await? {
            Some(b) => Some(serde_json::from_slice(&b).with_context(|| {
                format!("{}/etcd-manager/{STATUS_FILE} is malformed; it is rewritten by the leader within a minute", store.url())
            })?),
            None => None,
        };
        let spec = store.read_spec().await?;
        let backups = store.list_backups().await?;
        let last = match backups
            .iter()
            .rev()
            .find(|n| backup::parse_backup_name(n).is_some())
        {
            Some(n) => Some((
                n.clone(),
                store.read_backup_info(n).await.ok(),
                store.read_backup_extra(n).await.ok().flatten(),
            )),
            None => None,
        };
        let delta = match &last {
            Some((n, _, Some(extra))) => match (extra.revision, store.list_segments(n).await) {
                (Some(rev), Ok(ranges)) if !ranges.is_empty() => Some((
                    ranges.len(),
                    etcd_manager::backups::delta::chain_end(rev, &ranges),
                )),
                _ => None,
            },
            _ => None,
        };
        let commands = store.list_commands().await?;
        Ok(StatusFacts {
            now,
            report,
            spec,
            backups,
            last,
            delta,
            commands,
        })
    }

    fn json(&self) -> anyhow::Result<String> {
        let now = self.now;
        let delta = self.delta;
        let v = serde_json::json!({
            "report": self.report,
            "reportAgeSeconds": self.report.as_ref().map(|r| now - r.written_at),
            "spec": self.spec,
            "lastBackup": self.last.as_ref().map(|(n, info, extra)| serde_json::json!({
                "name": n,
                "ageSeconds": backup::parse_backup_name(n).map(|(t, _)| now - t.timestamp()),
                "etcdVersion": info.as_ref().map(|i| i.etcd_version.clone()),
                "compressedBytes": extra.as_ref().map(|e| e.compressed_size),
                "segments": delta.map(|d| d.0),
                "continuousThroughRevision": delta.map(|d| d.1),
            })),
            "backups": self.backups.len(),
            "commands": self.commands.iter().map(|c| serde_json::json!({"name": c.name, "command": c.command})).collect::<Vec<_>>(),
        });
        json(&v)
    }

    fn text(&self) -> String {
        let mut out = String::new();
        let spec_text = self
            .spec
            .as_ref()
            .map_or("none (run configure-cluster)".to_string(), |s| {
                format!("{} members, etcd {}", s.member_count, s.etcd_version)
            });
        out += &format!("spec:        {spec_text}\n");
        match &self.report {
            None => out += "leader:      no leader has reported yet\n",
            Some(r) => out += &report_text(r, self.now),
        }
        out += &self.last_backup_text();
        if self.commands.is_empty() {
            out += "commands:    none\n";
        }
        for c in &self.commands {
            out += &format!("command:     {} {}\n", c.name, c.command.to_upstream_text());
        }
        out
    }

    fn last_backup_text(&self) -> String {
        use etcd_manager::status::age;
        let Some((n, info, extra)) = &self.last else {
            return "last backup: none\n".to_string();
        };
        let age_text =
            backup::parse_backup_name(n).map_or("?".into(), |(t, _)| age(self.now - t.timestamp()));
        let size = extra
            .as_ref()
            .map_or(String::new(), |e| format!(", {} bytes", e.compressed_size));
        let version = info
            .as_ref()
            .map_or(String::new(), |i| format!(", etcd {}", i.etcd_version));
        let mut out = format!(
            "last backup: {n} ({age_text} ago{size}{version}); {} in all\n",
            self.backups.len()
        );
        if let Some((segments, through)) = self.delta {
            out += &format!(
                "             continuous backup through revision {through} ({segments} segment(s) since)\n"
            );
        }
        out
    }
}

/// The leader's report: who leads, the members, and what it waits for.
fn report_text(r: &etcd_manager::status::ClusterStatus, now: i64) -> String {
    use etcd_manager::status::age;
    // The leader rewrites an unchanged report every STATUS_REFRESH.
    let stale = if now - r.written_at > 3 * etcd_manager::status::STATUS_REFRESH.as_secs() as i64 {
        "  (STALE: no leader has reported since)"
    } else {
        ""
    };
    let mut out = format!(
        "leader:      {}  epoch {}  (reported {} ago){stale}\n",
        r.leader,
        r.epoch,
        age(now - r.written_at)
    );
    out += &format!(
        "quarantined: {}\n",
        if r.quarantined { "yes" } else { "no" }
    );
    out += "members:\n";
    if r.members.is_empty() {
        out += "  (none)\n";
    }
    for m in &r.members {
        let role = if m.learner {
            "learner"
        } else if m.raft_leader {
            "leader"
        } else {
            "voter"
        };
        let name = if m.name.is_empty() {
            "(not started)"
        } else {
            &m.name
        };
        out += &format!(
            "  {name:<24} {:<16} {:<9} {role:<8} {}\n",
            m.id,
            if m.healthy { "healthy" } else { "UNHEALTHY" },
            m.peer_urls.join(",")
        );
    }
    out += &format!("managers:    {} in gossip\n", r.peers.len());
    if let Some(v) = &r.version_change {
        out += &format!("version:     {v}\n");
    }
    for w in &r.waits {
        out += &format!("waiting:     {w}\n");
    }
    if let Some(q) = &r.recover_quorum {
        out += &format!("recovery:    {q}\n");
    }
    if let Some(g) = &r.gossip {
        out += &format!("gossip:      {g}\n");
    }
    for w in &r.warnings {
        out += &format!("WARNING:     {w}\n");
    }
    if let Some(c) = &r.continuous_backup {
        out += &format!("continuous:  {c}\n");
    }
    for j in &r.jobs {
        out += &format!("job:         {j}\n");
    }
    out
}

async fn status(store: &BackupStore, output: Output) -> anyhow::Result<String> {
    let facts = StatusFacts::read(store).await?;
    if output == Output::Json {
        return facts.json();
    }
    Ok(facts.text())
}

async fn list_backups_wide(store: &BackupStore, names: &[String]) -> anyhow::Result<String> {
    use etcd_manager::status::age;
    let now = wall_now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut out = format!(
        "{:<28} {:>6} {:<8} {:>12} {:<8} {:<9} {:<23} {}\n",
        "NAME", "AGE", "ETCD", "BYTES", "CHECKSUM", "ENCRYPTED", "REVISIONS", "DRILL"
    );
    for n in names {
        let age_text =
            backup::parse_backup_name(n).map_or("?".to_string(), |(t, _)| age(now - t.timestamp()));
        let version = store
            .read_backup_info(n)
            .await
            .map(|i| i.etcd_version)
            .unwrap_or_else(|_| "?".into());
        let extra = store.read_backup_extra(n).await.ok().flatten();
        let size = extra
            .as_ref()
            .map_or("?".to_string(), |e| e.compressed_size.to_string());
        let sum = if extra.is_some() { "sha256" } else { "none" };
        let encrypted = match extra.as_ref().and_then(|e| e.encryption.as_ref()) {
            Some(e) => e.scheme.as_str(),
            None => "-",
        };
        // The revision it holds, and how far its continuous backup reaches
        // (the points a restore can go to); `*` marks a replay's result.
        let revisions = match extra.as_ref().and_then(|e| e.revision) {
            None => "-".to_string(),
            Some(r) => {
                let end = match store.list_segments(n).await {
                    Ok(ranges) if !ranges.is_empty() => {
                        Some(etcd_manager::backups::delta::chain_end(r, &ranges))
                    }
                    _ => None,
                };
                let replayed = if extra.as_ref().is_some_and(|e| e.replayed_from.is_some()) {
                    "*"
                } else {
                    ""
                };
                match end {
                    Some(e) => format!("{r}..{e}{replayed}"),
                    None => format!("{r}{replayed}"),
                }
            }
        };
        let drill = match store.read_drill(n).await {
            Ok(Some(d)) => format!("{} {} ago", d.verdict.as_str(), age(now - d.at)),
            Ok(None) => "-".to_string(),
            Err(e) => format!("unreadable ({e})"),
        };
        out += &format!(
            "{n:<28} {age_text:>6} {version:<8} {size:>12} {sum:<8} {encrypted:<9} {revisions:<23} {drill}\n"
        );
    }
    Ok(out)
}

/// Ask the managers for a restore drill of `backup` and wait for its
/// verdict (a record other than the one there before).
#[allow(clippy::disallowed_methods)] // the ctl polls with real time
async fn drill_on_manager(
    store: &BackupStore,
    backup: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<backup::DrillRecord> {
    let before = store.read_drill(backup).await.ok().flatten();
    let file = format!("{}--{backup}", backup::layout::VERIFY_NOW_FILE);
    store.write_manager_file(&file, b"{}\n".to_vec()).await?;
    let start = std::time::Instant::now();
    loop {
        if let Ok(Some(r)) = store.read_drill(backup).await
            && Some(&r) != before.as_ref()
        {
            return Ok(r);
        }
        if start.elapsed() > timeout {
            bail!(
                "no verdict within {}; the request stays queued as {file} (is a leader running? see etcd-manager-ctl status)",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Ask the leader to defragment, and wait until it removed the request.
#[allow(clippy::disallowed_methods)] // the ctl polls with real time
async fn defrag(
    store: &BackupStore,
    member: Option<&str>,
    timeout: std::time::Duration,
) -> anyhow::Result<String> {
    let file = match member {
        Some(m) => {
            etcd::check_ident(etcd::IdentKind::MemberName, m)
                .map_err(|e| anyhow::anyhow!("member {m:?}: {e}"))?;
            format!("{}--{m}", backup::layout::DEFRAG_NOW_FILE)
        }
        None => backup::layout::DEFRAG_NOW_FILE.to_string(),
    };
    let stamp = wall_now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    store
        .write_manager_file(&file, format!("{{\"requestedAt\":{stamp}}}\n").into_bytes())
        .await?;
    let start = std::time::Instant::now();
    loop {
        if !store.list_manager_files(&file).await?.contains(&file) {
            return Ok(format!(
                "defragmented {}; etcd_manager_defragmentations_total and the leader's log have the details\n",
                member.unwrap_or("every voter")
            ));
        }
        if start.elapsed() > timeout {
            bail!(
                "the leader has not finished within {}; the request stays queued (is a leader running, the cluster healthy? see etcd-manager-ctl status)",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Ask the leader to recover a lost quorum: its plan (from the status
/// report) first, then the request (stamped, see
/// `etcd_manager::recover_request`), then the queued restore. The leader
/// removes a request it reads while the quorum holds; one this ctl gives up
/// on is withdrawn, so no request stays armed.
#[allow(clippy::disallowed_methods)] // the ctl polls with real time
async fn recover_quorum(
    store: &BackupStore,
    timeout: std::time::Duration,
) -> anyhow::Result<String> {
    use backup::layout::STATUS_FILE;
    use etcd_manager::recover_request::RecoverQuorumRequest;
    use etcd_manager::status::{ClusterStatus, age};
    let mut out = String::new();
    if let Some(b) = store.read_manager_file(STATUS_FILE).await? {
        let report: ClusterStatus = serde_json::from_slice(&b)
            .with_context(|| format!("{}/etcd-manager/{STATUS_FILE} is malformed", store.url()))?;
        let written = wall_now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
            - report.written_at;
        match report.waits.iter().find(|w| w.starts_with("quorum lost")) {
            Some(w) => out += &format!("the leader ({}) reports: {w}\n", report.leader),
            None if written > 120 => bail!(
                "the last report, written {} ago by {}, says no quorum is lost (waits: {:?}); no leader has written one since, \
                 so it may be out of date: with most managers gone for good no manager can lead (a majority of the known managers \
                 must accept it); see etcd-manager-ctl status",
                age(written),
                report.leader,
                report.waits
            ),
            None => bail!(
                "the leader's last report ({} ago) says no quorum is lost (waits: {:?}); nothing to recover (etcd-manager-ctl status)",
                age(written),
                report.waits
            ),
        }
    }
    let before: std::collections::BTreeSet<String> = store
        .list_commands()
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect();
    let requested_at = wall_now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let body = RecoverQuorumRequest { requested_at }.body();
    store
        .write_manager_file(backup::layout::RECOVER_QUORUM_FILE, body.clone())
        .await?;
    let start = std::time::Instant::now();
    loop {
        if let Some(new) = store
            .list_commands()
            .await?
            .into_iter()
            .find(|c| !before.contains(&c.name))
        {
            let backup = new
                .command
                .restore_backup
                .as_ref()
                .map(|r| r.backup.clone())
                .unwrap_or_default();
            out += &format!(
                "recovery queued: restore of {backup} (command {}); etcd-manager-ctl status follows it\n",
                new.name
            );
            return Ok(out);
        }
        let pending = store
            .read_manager_file(backup::layout::RECOVER_QUORUM_FILE)
            .await?;
        if pending.is_none() {
            bail!(
                "the leader removed the request without a recovery: the cluster it sees holds its quorum again \
                 (etcd-manager-ctl status)"
            );
        }
        if start.elapsed() > timeout {
            // Withdraw it (if it is still ours): a request left armed would
            // rebuild a later quorum loss at once, with no grace.
            if pending.as_deref() == Some(body.as_slice()) {
                store
                    .delete_manager_file(backup::layout::RECOVER_QUORUM_FILE)
                    .await?;
            }
            bail!(
                "the leader has not queued the recovery within {}; the request was withdrawn (is a leader running? see etcd-manager-ctl status)",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Ask the leader for a backup and wait for the one taken for this request
/// (not merely any new one: see `etcd_manager::backups::backup_now`).
#[allow(clippy::disallowed_methods)] // the ctl polls with real time
async fn backup_now(store: &BackupStore, timeout: std::time::Duration) -> anyhow::Result<String> {
    use etcd_manager::backups::backup_now::{BackupNowRequest, find_answer};
    let before: std::collections::BTreeSet<String> =
        store.list_backups().await?.into_iter().collect();
    let requested_at = wall_now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    store
        .write_manager_file(
            backup::layout::BACKUP_NOW_FILE,
            BackupNowRequest { requested_at }.body(),
        )
        .await?;
    let start = std::time::Instant::now();
    loop {
        if let Some(name) = find_answer(store, &before, requested_at).await? {
            return Ok(format!("{name}\n"));
        }
        if start.elapsed() > timeout {
            bail!(
                "no backup for this request within {}; the request stays queued (is a leader running? see etcd-manager-ctl status)",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
