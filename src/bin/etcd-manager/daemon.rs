//! Wiring of the `etcd-manager` process: open the store, load the node, bind
//! the peer API and gossip, start etcd if assigned, run the leader loop, and
//! shut down in order (stop reconciling, release the lease, leave gossip,
//! stop etcd).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use etcd_manager::cli::config::{Config, GossipAuth};
use etcd_manager::clock::{Clock, SystemClock};
use etcd_manager::driver::{Driver, DriverSettings, PeerPayload};
use etcd_manager::metrics::{Health, HttpState, InstrumentedStore};
use etcd_manager::node::{Node, NodeSettings};
use etcd_manager::platform::pki::{Ca, EtcdPki};
use etcd_manager::platform::volumes::{Placement, VolumeSource};
use tracing::Instrument;

/// The seeds folder EC2 discovery writes on the volume (AWS).
const EC2_SEEDS: &str = "ec2-seeds";

/// Run until `shutdown` is cancelled.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = open_store(&cfg).await?;
    // Certificates are wall-clock business: issued from the CAs now.
    let wall = clock.wall();
    let (etcd_pki, manager_ca) = load_pki(&cfg, wall)?;

    if let Some(endpoint) = cfg.backup_only.clone() {
        let tls = sidecar_tls(&cfg, etcd_pki.as_deref())?;
        return run_backup_only(cfg, endpoint, tls, store, clock, shutdown).await;
    }

    // The volume (or --data-dir) gives the data dir, the address and, for a
    // volume, the member's name.
    let Some(placement) =
        etcd_manager::platform::volumes::place(&cfg.volume, cfg.address, clock.as_ref(), &shutdown)
            .await?
    else {
        return Ok(());
    };
    let cfg = cfg.placed(placement.data_dir.clone(), placement.address);
    spawn_ec2_discovery(&cfg, &placement, &clock, &shutdown)?;
    let node = open_node(&cfg, &placement, &store, etcd_pki.clone())?;
    let gossip_keys = gossip_keys(&cfg, manager_ca.as_ref())?;
    let peers = match &manager_ca {
        None => etcd_manager::peer::PeerClient::insecure(),
        Some(ca) => etcd_manager::peer::PeerClient::tls(
            etcd_manager::platform::pki::PeerTls::issue(
                ca,
                node.id(),
                cfg.peer_api_addr.ip(),
                wall,
            )
            .context("issuing the peer API certificate")?,
        ),
    };
    let etcd_tls = etcd_pki.as_ref().map(|p| p.client.clone());
    let span = tracing::info_span!("node", cluster = %cfg.cluster_name, id = %node.id());
    let parts = NodeParts {
        node,
        peers,
        gossip_keys,
        etcd_tls,
        store,
        clock,
    };
    run_node(cfg, parts, shutdown).instrument(span).await
}

/// The store `--backup-store` names, its requests counted in metrics.
async fn open_store(cfg: &Config) -> anyhow::Result<backup::BackupStore> {
    let mut store_options = cfg.store_options.clone();
    backup::resolve_s3_region(&cfg.backup_store, &mut store_options).await;
    let raw = backup::BackupStore::open(&cfg.backup_store, &store_options)
        .with_context(|| "--backup-store".to_string())?;
    Ok(backup::BackupStore::new(
        InstrumentedStore::wrap(raw.object_store(), raw.url()),
        raw.base().clone(),
        raw.url().to_string(),
    )
    .with_bulk(InstrumentedStore::wrap(raw.bulk_object_store(), raw.url()))
    .with_encryption(cfg.encryption.clone()))
}

/// etcd's certificates (unless `--etcd-insecure`) and the etcd-manager CA
/// (unless `--insecure` or backup-only), from `--pki-dir`.
fn load_pki(
    cfg: &Config,
    wall: std::time::SystemTime,
) -> anyhow::Result<(Option<Arc<EtcdPki>>, Option<Ca>)> {
    let etcd_pki = if cfg.etcd_insecure {
        None
    } else {
        Some(Arc::new(
            EtcdPki::load(&cfg.pki_dir, wall).context("--pki-dir")?,
        ))
    };
    let manager_ca = if cfg.insecure || cfg.backup_only.is_some() {
        None
    } else {
        Some(
            Ca::load(
                &cfg.pki_dir,
                etcd_manager::platform::pki::MANAGER_CA,
                "--insecure",
            )
            .context("--pki-dir")?,
        )
    };
    Ok((etcd_pki, manager_ca))
}

/// Backup-only mode's client identity for etcd: etcd-backup's three
/// files, else the one issued from `--pki-dir`.
fn sidecar_tls(
    cfg: &Config,
    etcd_pki: Option<&EtcdPki>,
) -> anyhow::Result<Option<etcd::ClientTls>> {
    let Some([ca, cert, key]) = &cfg.backup_client_tls else {
        return Ok(etcd_pki.map(|p| p.client.clone()));
    };
    let read = |p: &std::path::PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    Ok(Some(etcd::ClientTls {
        ca_pem: read(ca)?,
        cert_pem: read(cert)?,
        key_pem: read(key)?,
    }))
}

/// On AWS the peers are the instances the other tagged volumes are
/// attached to: their addresses kept as a seeds folder gossip reads.
fn spawn_ec2_discovery(
    cfg: &Config,
    placement: &Placement,
    clock: &Arc<dyn Clock>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let (Some(aws), VolumeSource::Aws { volumes, .. }) = (&placement.aws, &cfg.volume) else {
        return Ok(());
    };
    let ec2 = etcd_manager::platform::volumes::ec2::Ec2Client::from_env(
        &aws.region,
        &aws.metadata_endpoint,
    )
    .context("the EC2 client for discovery")?;
    tokio::spawn(
        etcd_manager::platform::volumes::aws::run_discovery(
            Arc::new(ec2),
            volumes.tags.clone(),
            cfg.data_dir.join(EC2_SEEDS),
            cfg.discovery_poll_interval,
            clock.clone(),
            shutdown.clone(),
        )
        .in_current_span(),
    );
    Ok(())
}

/// This machine's node: its identity and state in the data dir.
fn open_node(
    cfg: &Config,
    placement: &Placement,
    store: &backup::BackupStore,
    etcd_pki: Option<Arc<EtcdPki>>,
) -> anyhow::Result<Arc<Node>> {
    let mut etcd_env_overrides = etcd::etcd_env_overrides_from_process();
    etcd_env_overrides.extend(cfg.etcd_env_file.iter().cloned());
    Ok(Node::open(NodeSettings {
        cluster_name: cfg.cluster_name.clone(),
        data_dir: cfg.data_dir.clone(),
        node_config: cfg.node.clone(),
        fixed_id: placement.node_id.clone(),
        dns_suffix: cfg.dns_suffix.clone(),
        listen_metrics_urls: cfg.listen_metrics_urls.clone(),
        address: placement.address,
        listen_address: cfg.etcd_listen_address.clone(),
        bin_dirs: cfg.etcd_bin_dirs.clone(),
        etcd_env_overrides,
        store: store.clone(),
        etcd_pki,
        runtime: std::sync::Arc::new(etcd_manager::edges::ProcessRuntime),
        rules: etcd_manager::core::rules::SafetyRules::ALL,
    })?
    .shared())
}

/// Gossip's keys: `--gossip-key-file`, else derived from the manager CA's
/// key (every master holds it), else plain (`--insecure`, `--insecure-gossip`).
fn gossip_keys(
    cfg: &Config,
    manager_ca: Option<&Ca>,
) -> anyhow::Result<Option<gossip::GossipKeys>> {
    Ok(match (&cfg.gossip_auth, manager_ca) {
        (GossipAuth::KeyFile(path), _) => {
            Some(gossip::load_key_file(path).context("--gossip-key-file")?)
        }
        (GossipAuth::DerivedFromCa, Some(ca)) => {
            let key = ca
                .gossip_key(&cfg.cluster_name)
                .context("deriving the gossip key from the etcd-manager CA")?;
            Some(gossip::GossipKeys::new(vec![key]).context("the derived gossip key")?)
        }
        (GossipAuth::DerivedFromCa, None) | (GossipAuth::Off(_), _) => None,
    })
}

/// What [`run`] made for the node's run.
struct NodeParts {
    node: Arc<Node>,
    peers: etcd_manager::peer::PeerClient,
    gossip_keys: Option<gossip::GossipKeys>,
    etcd_tls: Option<etcd::ClientTls>,
    store: backup::BackupStore,
    clock: Arc<dyn Clock>,
}

/// The servers every manager runs: the peer API and /metrics.
struct Servers {
    cancel: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

/// Gossip and the tasks that keep it fed.
struct Gossip {
    handle: gossip::GossipHandle,
    task: tokio::task::JoinHandle<()>,
    initial_keys: Option<gossip::GossipKeys>,
    refresh: Duration,
}

async fn run_node(
    cfg: Config,
    parts: NodeParts,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let NodeParts {
        node,
        peers,
        gossip_keys,
        etcd_tls,
        store,
        clock,
    } = parts;
    let listener = etcd_manager::peer::bind(cfg.peer_api_addr).await.with_context(|| {
        format!(
            "cannot listen on {} (TCP, peer API); is another etcd-manager running? choose another --address or --peer-api-port",
            cfg.peer_api_addr
        )
    })?;
    let health = Arc::new(Health::default());
    let stale = cfg.controller_interval * 3 + Duration::from_secs(60);
    let http = bind_metrics(cfg.metrics_address, &health, &clock, stale).await?;
    metrics::gauge!(etcd_manager::metrics::BACKUP_INTERVAL).set(cfg.backup_interval.as_secs_f64());

    let cancel = CancellationToken::new();
    let gossip = start_gossip(&cfg, &node, &peers, gossip_keys, &clock, &cancel).await?;
    health.set_gossip_up(true);
    // The local etcd first, whatever the store does: a manager that restarts
    // while the store is down must not keep its member down too. Only a
    // quick look whether a quorum recovery replaced its cluster meanwhile.
    node.retire_if_replaced(&store, std::time::Duration::from_secs(3))
        .await;
    node.resume().await?;
    let warnings = gossip_warnings(&cfg);
    let mut servers = Servers {
        cancel: cancel.child_token(),
        tasks: tokio::task::JoinSet::new(),
    };
    servers.tasks.spawn(
        etcd_manager::peer::serve(
            listener,
            node.clone(),
            peers.server_tls(),
            servers.cancel.clone(),
        )
        .in_current_span(),
    );
    if let Some((listener, state)) = http {
        servers.tasks.spawn(etcd_manager::metrics::serve_http(
            listener,
            state,
            servers.cancel.clone(),
        ));
    }
    let lease = lock::LeaseClient::new(
        store.object_store(),
        store.lease_prefix(),
        node.id().to_string(),
        cfg.lease.clone(),
    );
    // Only now touch the store: wait for it (etcd runs and the peer API
    // answers meanwhile); a store without conditional writes is fatal.
    let Some(store_id) = probe_store(&lease, &store, &clock, &shutdown).await? else {
        return stop_servers(cancel, servers, gossip, node).await;
    };
    // Every manager must share this store: a candidate on another store is
    // never accepted as leader (see Request::Leadership).
    tracing::info!(store_id = %store_id, "backup store identified");
    node.set_store_id(store_id);
    tracing::info!(
        gossip = %cfg.gossip_addr,
        peer_api = %cfg.peer_api_addr,
        store = %cfg.backup_store,
        "etcd-manager started"
    );
    let discovery_cancel = CancellationToken::new();
    let side_tasks = spawn_side_tasks(&cfg, &node, &store, &gossip, &clock, &discovery_cancel);

    let driver_cancel = cancel.child_token();
    let settings = driver_settings(&cfg, &node, &peers, etcd_tls, warnings, gossip.refresh);
    let driver = Driver::new(
        settings,
        health.clone(),
        store,
        lease,
        Arc::new(gossip.handle.clone()),
        node.clone(),
        clock.clone(),
    );
    let driver_task = tokio::spawn(driver.run(driver_cancel.clone()).in_current_span());

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    driver_cancel.cancel();
    if let Err(e) = driver_task.await {
        tracing::warn!(error = %e, "leader loop ended badly");
    }
    discovery_cancel.cancel();
    for t in side_tasks {
        let _ = t.await;
    }
    stop_servers(cancel, servers, gossip, node).await
}

/// Listen for /metrics, /healthz and /readyz if `--metrics-address` asks:
/// the recorder installed, and what the server needs.
async fn bind_metrics(
    address: Option<std::net::SocketAddr>,
    health: &Arc<Health>,
    clock: &Arc<dyn Clock>,
    stale: Duration,
) -> anyhow::Result<Option<(tokio::net::TcpListener, Arc<HttpState>)>> {
    let Some(addr) = address else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for metrics; choose another --metrics-address")
    })?;
    let handle = etcd_manager::metrics::install_recorder()?;
    let start = clock.now();
    let c = clock.clone();
    let state = HttpState {
        metrics: handle,
        health: health.clone(),
        now_ms: Box::new(move || c.now().saturating_duration_since(start).as_millis() as u64),
        stale,
    };
    Ok(Some((listener, Arc::new(state))))
}

/// Join gossip: seeds, the seed and discovery folders, the keys.
async fn start_gossip(
    cfg: &Config,
    node: &Arc<Node>,
    peers: &etcd_manager::peer::PeerClient,
    keys: Option<gossip::GossipKeys>,
    clock: &Arc<dyn Clock>,
    cancel: &CancellationToken,
) -> anyhow::Result<Gossip> {
    let payload = PeerPayload::from_info(&node.info().await, cfg.peer_api_addr, None);
    let mut gcfg = gossip::GossipConfig::new(node.id().to_string(), cfg.gossip_addr);
    gcfg.seeds = cfg.all_seeds();
    if matches!(cfg.volume, VolumeSource::External { .. }) && cfg.static_config.is_none() {
        // Upstream's bare-metal discovery without a static config.
        gcfg.seed_dir = Some((
            cfg.host_root.join("etc/kubernetes/etcd-manager/seeds"),
            cfg.gossip_addr.port(),
        ));
    }
    if matches!(cfg.volume, VolumeSource::Aws { .. }) {
        gcfg.seed_dir = Some((cfg.data_dir.join(EC2_SEEDS), cfg.gossip_addr.port()));
    }
    gcfg.discovery_dir = cfg.discovery_dir.clone();
    gcfg.cluster_size_hint = cfg.cluster_size_hint;
    if let Some(keys) = keys {
        tracing::info!(mode = cfg.gossip_auth.label(), keys = keys.len(), fingerprints = ?keys.fingerprints(), "gossip is authenticated and encrypted");
        gcfg.keys = Some(keys);
        // Managers of the release before derived keys gossip in plain: taken
        // once their peer API certificate confirms them (a rolling update).
        if cfg.gossip_auth == GossipAuth::DerivedFromCa && peers.server_tls().is_some() {
            gcfg.plain_check = Some(Arc::new(etcd_manager::peer::PeerCertCheck {
                client: peers.clone(),
                peer_port: cfg.peer_api_addr.port(),
                cluster_name: cfg.cluster_name.clone(),
            }));
        }
    }
    metrics::gauge!(etcd_manager::metrics::GOSSIP_AUTHENTICATED, "mode" => cfg.gossip_auth.label())
        .set(if gcfg.keys.is_some() { 1.0 } else { 0.0 });
    gcfg.incarnation = clock
        .wall()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let initial_keys = gcfg.keys.clone();
    let refresh = gcfg.refresh_interval;
    let (handle, task) = gossip::start(gcfg, payload.encode(), cancel.child_token())
        .await
        .context("gossip")?;
    Ok(Gossip {
        handle,
        task,
        initial_keys,
        refresh,
    })
}

/// The warning `status` shows for plain gossip (also logged).
fn gossip_warnings(cfg: &Config) -> Vec<String> {
    let GossipAuth::Off(flag) = &cfg.gossip_auth else {
        return vec![];
    };
    let w = format!(
        "gossip on UDP {} is neither authenticated nor encrypted ({flag}): \
         any host that reaches it can join the membership and read each manager's address and etcd state",
        cfg.gossip_addr
    );
    tracing::warn!("{w}");
    vec![w]
}

/// The gossip key file's reloader and the store discovery, each if asked,
/// until `cancel`.
fn spawn_side_tasks(
    cfg: &Config,
    node: &Arc<Node>,
    store: &backup::BackupStore,
    gossip: &Gossip,
    clock: &Arc<dyn Clock>,
    cancel: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![];
    if let Some(path) = cfg.gossip_key_file.clone() {
        tasks.push(tokio::spawn(
            reload_keys(
                path,
                gossip.handle.clone(),
                gossip.initial_keys.clone(),
                clock.clone(),
                cancel.clone(),
            )
            .in_current_span(),
        ));
    }
    if let (Some(dir), true) = (&cfg.discovery_dir, cfg.store_discovery) {
        let me = etcd_manager::platform::discovery::Record {
            id: node.id().to_string(),
            addr: cfg.gossip_addr,
        };
        tasks.push(tokio::spawn(
            etcd_manager::platform::discovery::run(
                store.clone(),
                me,
                dir.clone(),
                clock.clone(),
                cancel.clone(),
            )
            .in_current_span(),
        ));
    }
    tasks
}

/// The leader loop's settings, from the flags and what the node found.
fn driver_settings(
    cfg: &Config,
    node: &Arc<Node>,
    peers: &etcd_manager::peer::PeerClient,
    etcd_tls: Option<etcd::ClientTls>,
    warnings: Vec<String>,
    gossip_refresh: Duration,
) -> DriverSettings {
    DriverSettings {
        cluster_name: cfg.cluster_name.clone(),
        peer_api: cfg.peer_api_addr,
        backup_interval: cfg.backup_interval,
        controller_interval: cfg.controller_interval,
        scratch_dir: cfg.data_dir.join("restore-check"),
        etcd_bin_dirs: cfg.etcd_bin_dirs.clone(),
        retention: cfg.retention,
        replace_grace: cfg.member_replace_grace,
        defrag: cfg.defrag,
        restore_clear_prefixes: cfg.restore_clear_prefixes.clone(),
        auto_recover_quorum_loss: cfg.auto_recover_quorum_loss,
        backup_verify_every: cfg.backup_verify_every,
        etcd_quota_bytes: node
            .etcd_setting("ETCD_QUOTA_BACKEND_BYTES")
            .and_then(|v| v.trim().parse().ok()),
        peers: Arc::new(peers.clone()),
        etcd: Arc::new(etcd_manager::edges::EtcdConnector {
            tls: etcd_tls.clone(),
        }),
        etcd_tls,
        randomness: Arc::new(etcd_manager::edges::ThreadRandomness),
        warnings,
        gossip_mode: cfg.gossip_auth.describe(),
        static_config: cfg.static_config.clone(),
        // The hosts file etcd itself resolves names with: in kops' static
        // pod that is the container's /etc/hosts (as upstream writes it),
        // not the host's under /rootfs.
        hosts_file: (!cfg.dns_suffix.is_empty()).then(|| cfg.hosts_file.clone()),
        dns_suffix: cfg.dns_suffix.clone(),
        delta_interval: cfg.delta_interval,
        gossip_settle: etcd_manager::leadership::settle_time(gossip_refresh),
        rules: etcd_manager::core::rules::SafetyRules::ALL,
    }
}

/// The end of every run: leave gossip, stop the servers, stop etcd.
async fn stop_servers(
    cancel: CancellationToken,
    mut servers: Servers,
    gossip: Gossip,
    node: Arc<Node>,
) -> anyhow::Result<()> {
    gossip.handle.leave(Duration::from_secs(2)).await;
    cancel.cancel();
    let _ = gossip.task.await;
    servers.cancel.cancel();
    while servers.tasks.join_next().await.is_some() {}
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Probe the store for conditional writes and read (or create) its id until
/// it answers: the id once it does, None when shut down first; a store that
/// answers but does not honour create-only writes is an error (leader
/// election cannot run on it).
async fn probe_store(
    lease: &lock::LeaseClient,
    store: &backup::BackupStore,
    clock: &Arc<dyn Clock>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<String>> {
    let mut pause = Duration::from_secs(1);
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            r = lease.probe() => r,
        };
        match attempt {
            Ok(()) => match store.store_id(Node::fresh_id()).await {
                Ok(id) => return Ok(Some(id)),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_s = pause.as_secs(), "cannot read the backup store's id yet; trying again")
                }
            },
            Err(e @ lock::Error::PreconditionsUnsupported { .. }) => {
                return Err(
                    anyhow::Error::new(e).context("the backup store cannot hold the leader lease")
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_s = pause.as_secs(), "the backup store does not answer yet; etcd keeps running, trying again");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = clock.sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// Backup-only mode: no gossip, no lease, no peer API; metrics if asked.
async fn run_backup_only(
    cfg: Config,
    endpoint: String,
    tls: Option<etcd::ClientTls>,
    store: backup::BackupStore,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let health = Arc::new(Health::default());
    health.set_gossip_up(true);
    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    if let Some((listener, state)) = bind_metrics(
        cfg.metrics_address,
        &health,
        &clock,
        Duration::from_secs(120),
    )
    .await?
    {
        tasks.spawn(etcd_manager::metrics::serve_http(
            listener,
            state,
            cancel.child_token(),
        ));
    }
    metrics::gauge!(etcd_manager::metrics::BACKUP_INTERVAL).set(cfg.backup_interval.as_secs_f64());
    tracing::info!(%endpoint, store = %cfg.backup_store, "etcd-manager started in backup-only mode");
    let settings = etcd_manager::backups::sidecar::SidecarSettings {
        endpoint,
        backup_interval: cfg.backup_interval,
        retention: cfg.retention,
        tls,
    };
    tasks.spawn(etcd_manager::backups::sidecar::run(
        settings,
        store,
        clock,
        health,
        cancel.child_token(),
    ));
    shutdown.cancelled().await;
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    tracing::info!("stopped");
    Ok(())
}

/// Reread the gossip key file on SIGHUP and every 30 s, and hand changed keys
/// to gossip: rotation without a restart (add the new key second everywhere,
/// then first, then drop the old one).
async fn reload_keys(
    path: std::path::PathBuf,
    gossip: gossip::GossipHandle,
    mut current: Option<gossip::GossipKeys>,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).ok();
    loop {
        let hup_recv = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = hup_recv => {}
            _ = clock.sleep(Duration::from_secs(30)) => {}
        }
        match gossip::load_key_file(&path) {
            Ok(keys) if current.as_ref() != Some(&keys) => {
                match gossip.set_keys(keys.clone()).await {
                    Ok(()) => {
                        tracing::info!(fingerprints = ?keys.fingerprints(), "gossip keys reloaded");
                        current = Some(keys);
                    }
                    Err(e) => tracing::warn!(error = %e, "could not apply the new gossip keys"),
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not reread the gossip key file; keeping the current keys")
            }
        }
    }
}
