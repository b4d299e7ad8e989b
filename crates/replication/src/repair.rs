//! Repairing damaged blobs from replication peers (`ferry fsck --repair`):
//! a verified copy of each digest is fetched from the other side of an
//! outgoing replication (the peers this instance can reach), through the
//! same exclusive, resumable and verified transfer the engine uses. Any
//! mode will do: a peer that does not send content still gives back the
//! blobs of items this instance wrote (a hub repairs from the spokes it
//! pushes to), and a repair copies no item, only blobs.

use ferry_types::Digest;
use serde::Serialize;

use std::sync::Arc;

use crate::client::Remote;
use crate::config::{Communication, ReplicationConfig};
use crate::engine::{Progress, Run};
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
        let mut unreachable: Vec<String> = Vec::new();
        for rec in self.store().replications().await? {
            let Ok(cfg) = serde_json::from_value::<ReplicationConfig>(rec.config.clone()) else {
                continue;
            };
            if !matches!(cfg.communication, Communication::Outgoing { .. }) {
                continue;
            }
            // The handshake tells the peer who asks (it gives back what
            // this instance wrote) and checks that the pair still fits.
            let mut run = Run::new(self, &rec, &cfg, Arc::new(Progress::default()))?;
            match run.handshake().await {
                Ok(_) => peers.push((rec.name.clone(), run.remote().clone())),
                Err(e) => unreachable.push(format!("{}: {e}", rec.name)),
            }
        }
        let mut out = Vec::new();
        for d in digests {
            let mut repair = BlobRepair {
                digest: *d,
                repaired_from: None,
                errors: Vec::new(),
            };
            if peers.is_empty() && unreachable.is_empty() {
                repair
                    .errors
                    .push("this instance has no outgoing replication to fetch a copy through".into());
            }
            repair.errors.extend(unreachable.iter().cloned());
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
