//! Repairing damaged blobs from replication peers (`ferry fsck --repair`):
//! a verified copy of each digest is fetched from the other side of an
//! outgoing replication that pulls content (the only peers this instance
//! can reach and read from), through the same exclusive, resumable and
//! verified transfer the engine uses.

use ferry_types::Digest;
use serde::Serialize;

use crate::client::Remote;
use crate::config::{Communication, ReplicationConfig};
use crate::{ReplError, Replicator};

/// What became of one damaged blob.
#[derive(Debug, Clone, Serialize)]
pub struct BlobRepair {
    pub digest: Digest,
    /// The replication whose peer supplied a verified copy.
    pub repaired_from: Option<String>,
    /// Why no peer could (one reason per peer tried), if none did.
    pub errors: Vec<String>,
}

impl Replicator {
    /// Fetches a verified copy of each digest from the first peer that has
    /// it and commits it in place of the damaged one.
    pub async fn repair_blobs(&self, digests: &[Digest]) -> Result<Vec<BlobRepair>, ReplError> {
        let mut peers: Vec<(String, Remote)> = Vec::new();
        for rec in self.store().replications().await? {
            let Ok(cfg) = serde_json::from_value::<ReplicationConfig>(rec.config.clone()) else {
                continue;
            };
            if let Communication::Outgoing { url, token } = &cfg.communication
                && cfg.mode.flows.pull_missing
            {
                peers.push((rec.name.clone(), Remote::new(self.http().clone(), url, token)));
            }
        }
        let mut out = Vec::new();
        for d in digests {
            let mut repair = BlobRepair {
                digest: *d,
                repaired_from: None,
                errors: Vec::new(),
            };
            if peers.is_empty() {
                repair
                    .errors
                    .push("no outgoing replication pulls content from a peer".into());
            }
            for (name, remote) in &peers {
                match self.fetch_verified(remote, d).await {
                    Ok(()) => {
                        repair.repaired_from = Some(name.clone());
                        break;
                    }
                    Err(e) => repair.errors.push(format!("{name}: {e}")),
                }
            }
            out.push(repair);
        }
        Ok(out)
    }

    async fn fetch_verified(&self, remote: &Remote, d: &Digest) -> Result<(), ReplError> {
        let store = self.ferry().blob_store().clone();
        let transfer = store.begin_transfer(d).await?;
        let stream = remote.fetch_blob(d, transfer.offset()).await?;
        let limit = self.ferry().config().max_upload_bytes.max(u64::MAX / 2);
        let staged = store.continue_transfer(transfer, stream, limit).await?;
        self.ferry().commit_blob(staged).await?;
        store.sync(&[*d]).await?;
        Ok(())
    }
}
