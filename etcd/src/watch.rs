//! Every change of the keyspace, in revision order (a watch of all keys from
//! a revision), and the calls that write such changes back: what continuous
//! backups record and point-in-time restores replay.

use std::time::Duration;

use etcd_client::{EventType, LeaseGrantOptions, Txn, TxnOp, WatchOptions, WatchStream};

use crate::{Error, EtcdClient};

/// The largest watch answer read: one revision of etcd's largest
/// transaction (128 operations of its 1.5 MiB request limit) fits.
pub const MAX_WATCH_MESSAGE: usize = 256 << 20;

/// One key's change within a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        /// The lease the key is attached to (0: none).
        lease: i64,
    },
    Delete {
        key: Vec<u8>,
    },
}

/// What a watch of all keys delivered next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchBatch {
    /// Changes in revision order, each revision whole (etcd splits a
    /// revision over answers only when asked to fragment, and we do not).
    Changes(Vec<(i64, KeyChange)>),
    /// The revision asked for is compacted away: the history from there
    /// is gone. The oldest revision still held.
    Compacted { compact_revision: i64 },
    /// No change, but the keyspace is at this revision (a progress notice).
    Progress { revision: i64 },
}

/// A watch of every key from a revision on.
pub struct KeyspaceWatch {
    stream: WatchStream,
    endpoints: Vec<String>,
    idle: Duration,
}

impl std::fmt::Debug for KeyspaceWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyspaceWatch")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl KeyspaceWatch {
    /// The next batch. `idle` bounds the wait: progress notices come every
    /// few minutes at most (etcd's default is 10 minutes), so the caller
    /// asks for progress with [`KeyspaceWatch::request_progress`] when it
    /// wants to know where the keyspace is.
    pub async fn next(&mut self) -> Result<WatchBatch, Error> {
        loop {
            let msg = match tokio::time::timeout(self.idle, self.stream.message()).await {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => {
                    return Err(self.error("the watch stream ended (etcd closed it)".into()));
                }
                Ok(Err(e)) => return Err(self.error(crate::client::describe(&e))),
                Err(_) => {
                    return Err(Error::Timeout {
                        op: "watch",
                        endpoints: self.endpoints.clone(),
                        after: self.idle,
                    });
                }
            };
            if msg.compact_revision() > 0 {
                return Ok(WatchBatch::Compacted {
                    compact_revision: msg.compact_revision(),
                });
            }
            if msg.canceled() {
                return Err(self.error(format!(
                    "etcd cancelled the watch: {}",
                    msg.cancel_reason().chars().take(200).collect::<String>()
                )));
            }
            if msg.created() && msg.events().is_empty() {
                continue;
            }
            if msg.events().is_empty() {
                let revision = msg.header().map(|h| h.revision()).unwrap_or(0);
                return Ok(WatchBatch::Progress { revision });
            }
            let mut changes = Vec::with_capacity(msg.events().len());
            for ev in msg.events() {
                // etcd-client panics on an event type it does not know; etcd
                // has two, so a third is an answer we cannot use.
                let kind =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ev.event_type()))
                        .map_err(|_| {
                            self.error("an event of a type etcd does not define".into())
                        })?;
                let kv = ev
                    .kv()
                    .ok_or_else(|| self.error("an event without its key".into()))?;
                let revision = kv.mod_revision();
                if kv.key().is_empty() || revision <= 0 {
                    return Err(
                        self.error(format!("an event with an empty key or revision {revision}"))
                    );
                }
                let change = match kind {
                    EventType::Put => KeyChange::Put {
                        key: kv.key().to_vec(),
                        value: kv.value().to_vec(),
                        lease: kv.lease(),
                    },
                    EventType::Delete => KeyChange::Delete {
                        key: kv.key().to_vec(),
                    },
                };
                if changes.last().is_some_and(|(r, _)| *r > revision) {
                    return Err(self.error("events out of revision order".into()));
                }
                changes.push((revision, change));
            }
            return Ok(WatchBatch::Changes(changes));
        }
    }

    /// Ask etcd for a progress notice (answered as [`WatchBatch::Progress`]
    /// once every change before it was sent).
    pub async fn request_progress(&mut self) -> Result<(), Error> {
        self.stream
            .request_progress()
            .await
            .map_err(|e| self.error(crate::client::describe(&e)))
    }

    fn error(&self, detail: String) -> Error {
        Error::Client {
            op: "watch",
            endpoints: self.endpoints.clone(),
            detail,
        }
    }
}

impl EtcdClient {
    /// Watch every key from revision `from` on. A batch that does not come
    /// within `idle` ends the watch with a timeout.
    pub async fn watch_keyspace(&self, from: i64, idle: Duration) -> Result<KeyspaceWatch, Error> {
        let mut w = self
            .raw()
            .watch_client()
            .max_decoding_message_size(MAX_WATCH_MESSAGE);
        let opts = WatchOptions::new()
            .with_all_keys()
            .with_start_revision(from)
            .with_progress_notify();
        let stream = self.call("watch", w.watch("", Some(opts))).await?;
        Ok(KeyspaceWatch {
            stream,
            endpoints: self.endpoints().to_vec(),
            idle,
        })
    }

    /// Write one revision's changes as one transaction: the keyspace's
    /// revision after it.
    pub async fn apply_changes(&self, changes: &[KeyChange]) -> Result<i64, Error> {
        let ops: Vec<TxnOp> = changes
            .iter()
            .map(|c| match c {
                KeyChange::Put { key, value, lease } => TxnOp::put(
                    key.clone(),
                    value.clone(),
                    (*lease != 0).then(|| etcd_client::PutOptions::new().with_lease(*lease)),
                ),
                KeyChange::Delete { key } => TxnOp::delete(key.clone(), None),
            })
            .collect();
        let mut c = self.raw();
        let resp = self.call("txn", c.txn(Txn::new().and_then(ops))).await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// The TTL a lease was granted with: None when it does not exist (any
    /// more).
    pub async fn lease_granted_ttl(&self, id: i64) -> Result<Option<i64>, Error> {
        let mut c = self.raw();
        let resp = self
            .call("lease_time_to_live", c.lease_time_to_live(id, None))
            .await?;
        Ok((resp.ttl() >= 0).then_some(resp.granted_ttl()))
    }

    /// Grant lease `id` with `ttl` seconds (the id is the caller's). Ok when
    /// a lease of that id already exists.
    pub async fn lease_grant_id(&self, id: i64, ttl: i64) -> Result<(), Error> {
        let mut c = self.raw();
        let opts = LeaseGrantOptions::new().with_id(id);
        match self
            .call("lease_grant", c.lease_grant(ttl, Some(opts)))
            .await
        {
            Ok(_) => Ok(()),
            Err(Error::Client { detail, .. }) if detail.contains("lease already exists") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every key and value (whole keyspace, one linearizable read), sorted
    /// by key: for tests and checks of small clusters.
    pub async fn all_kvs(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Error> {
        let mut c = self.raw();
        let opts = etcd_client::GetOptions::new().with_all_keys();
        let resp = self.call("get", c.get("", Some(opts))).await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
            .collect())
    }
}

impl EtcdClient {
    /// The ids of every lease.
    pub async fn lease_ids(&self) -> Result<Vec<i64>, Error> {
        let mut c = self.raw();
        let resp = self.call("lease_leases", c.leases()).await?;
        Ok(resp.leases().iter().map(|l| l.id()).collect())
    }

    /// Renew lease `id` once.
    pub async fn lease_renew(&self, id: i64) -> Result<(), Error> {
        let mut c = self.raw();
        let (mut keeper, mut stream) = self
            .call("lease_keep_alive", c.lease_keep_alive(id))
            .await?;
        self.call("lease_keep_alive", keeper.keep_alive()).await?;
        self.call("lease_keep_alive", stream.message()).await?;
        Ok(())
    }
}
