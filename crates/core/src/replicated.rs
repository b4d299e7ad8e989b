//! Changes that arrive from elsewhere — pushed by a peer, pulled from the
//! other side, imported from a bundle — are checked as their feed type
//! checks a client upload before they are applied: keys, metadata and blob
//! lists by the type's validator in `formats`, and what can only be checked
//! against the stored bytes here (sizes, npm `dist.integrity`, an OCI
//! manifest's own bytes). A peer's token is no licence to store what no
//! client could.

use ferry_formats::{assets, cargo, npm, nuget, oci, pypi};
use ferry_store::{Change, ChangeOp, FeedRecord};
use ferry_types::{Digest, FeedType};
use futures::StreamExt;

use crate::{CoreError, Ferry};

/// A reader that hashes what passes through it for a `dist.integrity`
/// check, while a parser reads the same bytes.
struct IntegrityTee<R> {
    inner: R,
    hasher: npm::IntegrityHasher,
}

impl<R: std::io::Read> std::io::Read for IntegrityTee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Sizes of stored blobs, by digest, as [`Ferry::present_blob_sizes`] gives them.
type Sizes = std::collections::HashMap<Digest, u64>;

/// Largest OCI manifest read back to check a replicated manifest item.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

impl Ferry {
    /// Checks one change received from elsewhere: its stamp (see
    /// [`Ferry::check_stamp`]) and its item as the feed type would check an
    /// upload. The blobs a live item names must be stored already. In an
    /// OCI feed, the delete of a manifest that a live index lists, or a
    /// live tag names, here is refused as a client's would be (see
    /// [`Ferry::check_replicated_batch`], which judges a change among the
    /// others applied with it: this judges it alone, against what is
    /// stored). [`CoreError::Invalid`] says what is wrong, naming the key.
    pub async fn check_replicated(&self, feed: &FeedRecord, change: &Change) -> Result<(), CoreError> {
        let verdict = self
            .check_replicated_batch(feed, std::slice::from_ref(change), false)
            .await?;
        match verdict.into_iter().next().flatten() {
            Some(why) => Err(CoreError::Invalid(why)),
            None => Ok(()),
        }
    }

    /// Checks changes received from elsewhere that are to be applied
    /// together, in order (one write), as [`Ferry::check_replicated`]
    /// checks each; returns, for each change, why it is refused (`None`:
    /// accepted). What refers to other items is judged on the state the
    /// accepted changes leave together: in an OCI feed the delete of a
    /// manifest that a live index lists (or a live tag names) is accepted
    /// when the same batch deletes that index (or tag) too, before or after
    /// it, and refused otherwise, naming the index. Applied together, the
    /// accepted changes never leave an index or tag naming a manifest they
    /// deleted. `overwrite`: the changes will replace later stamps too
    /// ([`ferry_store::StampOrder::Overwrite`]). Errors: only what is not
    /// the changes' fault (storage).
    pub async fn check_replicated_batch(
        &self,
        feed: &FeedRecord,
        changes: &[Change],
        overwrite: bool,
    ) -> Result<Vec<Option<String>>, CoreError> {
        // The sizes of every blob the changes name, looked up at once (one
        // query and one pass over the files, not two hand-overs per item).
        let mut named = std::collections::HashSet::new();
        for c in changes {
            if let ChangeOp::Upsert { blobs, .. } = &c.op {
                named.extend(blobs.iter().copied());
            }
        }
        let named: Vec<Digest> = named.into_iter().collect();
        let sizes = self.present_blob_sizes(&named).await?;
        let mut verdicts = Vec::with_capacity(changes.len());
        for c in changes {
            match self.check_received_item(feed, c, &sizes).await {
                Ok(()) => verdicts.push(None),
                Err(CoreError::Invalid(why)) => verdicts.push(Some(why)),
                Err(e) => return Err(e),
            }
        }
        if feed.feed_type == FeedType::Assets {
            // A path is a file or a folder, never both, whatever the order
            // the changes come in (`Precondition::PathFree` holds the same
            // at the write, against a local upload racing this batch).
            let (at, passed): (Vec<usize>, Vec<&Change>) = changes
                .iter()
                .enumerate()
                .filter(|(i, _)| verdicts[*i].is_none())
                .unzip();
            for (j, why) in crate::assets::path_conflicts(self, feed, &passed).await? {
                verdicts[at[j]] = Some(why);
            }
        }
        if feed.feed_type == FeedType::Oci {
            let (at, passed): (Vec<usize>, Vec<&Change>) = changes
                .iter()
                .enumerate()
                .filter(|(i, _)| verdicts[*i].is_none())
                .unzip();
            for (j, why) in crate::oci::refused_manifest_deletes(self, feed, &passed, overwrite).await? {
                verdicts[at[j]] = Some(why);
            }
        }
        Ok(verdicts)
    }

    /// One received change by itself: its stamp and its item.
    async fn check_received_item(
        &self,
        feed: &FeedRecord,
        change: &Change,
        sizes: &Sizes,
    ) -> Result<(), CoreError> {
        self.check_stamp(&change.key, &change.stamp)
            .map_err(|e| CoreError::Invalid(format!("{e}; it is retried until this clock catches up")))?;
        let key = &change.key;
        let live = match &change.op {
            ChangeOp::Upsert { meta, blobs, .. } => Some((meta, blobs.as_slice())),
            ChangeOp::Delete => None,
        };
        match feed.feed_type {
            FeedType::Assets => {
                assets::validate_item(key, live)?;
                if let Some((meta, blobs)) = live {
                    let size = meta.get("size").and_then(|v| v.as_u64());
                    self.check_size(key.as_str(), &blobs[0], size, sizes).await?;
                }
            }
            FeedType::Npm => {
                let sri = npm::validate_item(key, live)?;
                let version = matches!(npm::parse_item_key(key)?, npm::NpmItemKey::Version { .. });
                if let (true, Some((_, blobs))) = (version, live) {
                    // One pass over the tarball: its package.json must name
                    // this version (as a publish's must), and its bytes
                    // must hash to the `dist.integrity` clients check.
                    self.replicated_blob_size(key.as_str(), &blobs[0], sizes).await?;
                    let (key, limits) = (key.clone(), self.config().archive);
                    self.inspect_stored(&blobs[0], move |r| {
                        let mut tee = IntegrityTee {
                            inner: r,
                            hasher: npm::IntegrityHasher::default(),
                        };
                        npm::check_version_tarball(&key, &mut tee, &limits)?;
                        std::io::copy(&mut tee, &mut std::io::sink())
                            .map_err(|e| CoreError::Internal(format!("reading a stored tarball: {e}")))?;
                        if let Some(sri) = sri {
                            tee.hasher
                                .check(&sri)
                                .map_err(|e| CoreError::invalid(format!("npm item {key}: {e}")))?;
                        }
                        Ok(())
                    })
                    .await?;
                }
            }
            FeedType::Pypi => {
                if let Some(file) = pypi::validate_item(key, live)? {
                    self.check_size(key.as_str(), &file.sha256, Some(file.size), sizes)
                        .await?;
                    // The file's own core metadata says what the item
                    // says (the simple index and PEP 658 serve it).
                    let limits = self.config().archive;
                    let reader = crate::blob_reader::SeekableBlob::new(
                        self.clone(),
                        file.sha256,
                        file.size,
                        tokio::runtime::Handle::current(),
                    );
                    let name = file.filename.clone();
                    let (info, core) = tokio::task::spawn_blocking(move || {
                        let info =
                            pypi::inspect_distribution(&name, std::io::BufReader::new(reader), &limits)
                                .map_err(|e| CoreError::invalid(format!("PyPI item {name}: {e}")))?;
                        let core = info.core_metadata.as_deref().map(Digest::of);
                        Ok::<_, CoreError>((info, core))
                    })
                    .await
                    .map_err(|e| CoreError::Internal(format!("distribution inspection failed: {e}")))??;
                    pypi::check_item_describes(&file, &info, core)?;
                }
            }
            FeedType::Cargo => {
                // The blob is the .crate its `cksum` (sha256) names, so the
                // digest check is the checksum check; the size must agree.
                if let (Some(item), Some((_, blobs))) = (cargo::validate_item(key, live)?, live) {
                    self.check_size(key.as_str(), &blobs[0], Some(item.size), sizes)
                        .await?;
                    // Its `Cargo.toml` names the crate and version the
                    // index line does (and it unpacks as an upload must).
                    let limits = self.config().archive;
                    let (name, vers) = (item.index.name.clone(), item.index.vers.clone());
                    self.inspect_stored(&blobs[0], move |r| {
                        cargo::inspect_crate(r, &name, &vers, &limits)
                            .map_err(|e| CoreError::invalid(format!("cargo item {name} {vers}: {e}")))
                    })
                    .await?;
                }
            }
            FeedType::Nuget => {
                // The blob is the .nupkg; its size must be the one recorded.
                if let (Some(item), Some((_, blobs))) = (nuget::validate_item(key, live)?, live) {
                    self.check_size(key.as_str(), &blobs[0], Some(item.size), sizes)
                        .await?;
                    // Its nuspec says what the metadata says (the feed's
                    // listings and v2 `PackageHash` are rendered from it).
                    let (spec, sha512) = self
                        .inspect_nupkg_stored(key.as_str(), &blobs[0], item.size)
                        .await?;
                    nuget::check_item_describes(&item, &spec, &sha512)?;
                }
            }
            FeedType::Debian => {
                if let Some(m) = ferry_formats::debian::validate_item(key, live)? {
                    self.check_size(key.as_str(), &m.sha256, Some(m.size), sizes)
                        .await?;
                    // The package itself must be the one the metadata
                    // names (the index lists it, and the feed signs that).
                    let limits = self.config().archive;
                    let info = self
                        .inspect_stored(&m.sha256, move |r| {
                            ferry_formats::debian::inspect_deb(r, &limits).map_err(CoreError::from)
                        })
                        .await?;
                    let found = (&info.package, &info.version, &info.architecture);
                    if found != (&m.package, &m.version, &m.architecture) {
                        return Err(CoreError::invalid(format!(
                            "debian item {key}: its .deb is {}_{}_{}, not the package its metadata names",
                            info.package, info.version, info.architecture
                        )));
                    }
                }
            }
            FeedType::Rpm => {
                // The blob is the .rpm; its size must be the one recorded,
                // and its headers say what the metadata says (the
                // repodata is rendered from it, and the feed signs that).
                if let Some(m) = ferry_formats::rpm::validate_item(key, live)? {
                    self.check_size(key.as_str(), &m.sha256, Some(m.size), sizes)
                        .await?;
                    let len = m.size;
                    let info = self
                        .inspect_stored(&m.sha256, move |r| {
                            ferry_formats::rpm::inspect_rpm(r, len).map_err(CoreError::from)
                        })
                        .await?;
                    if info != m.info {
                        return Err(CoreError::invalid(format!(
                            "rpm item {key}: its metadata does not describe its .rpm (whose headers say {}-{}:{}-{}.{})",
                            info.name, info.epoch, info.version, info.release, info.arch
                        )));
                    }
                }
            }
            FeedType::Oci => {
                let check = oci::validate_item(key, live).map_err(|e| CoreError::invalid(e.to_string()))?;
                if let oci::ItemCheck::Link { digest, sha512 } = check {
                    self.check_sha512(key.as_str(), &digest, &sha512, sizes).await?;
                }
                if let (oci::ItemCheck::Manifest { digest, meta }, Some((_, blobs))) = (check, live) {
                    let size = self.replicated_blob_size(key.as_str(), &digest, sizes).await?;
                    if size > MAX_MANIFEST_BYTES {
                        return Err(CoreError::invalid(format!(
                            "OCI item {key}: the manifest is {size} bytes, over {MAX_MANIFEST_BYTES}"
                        )));
                    }
                    let mut bytes = Vec::with_capacity(size as usize);
                    let mut body = self.read_blob(&digest, None).await?.stream;
                    while let Some(chunk) = body.next().await {
                        bytes.extend_from_slice(&chunk.map_err(|e| CoreError::Internal(e.to_string()))?);
                    }
                    oci::check_manifest_item(&bytes, &meta, blobs)
                        .map_err(|e| CoreError::invalid(format!("OCI item {key}: {e}")))?;
                    for (sha512, blob) in &meta.aliases {
                        self.check_sha512(key.as_str(), blob, sha512, sizes).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads a stored blob with `inspect` (a blocking parser over a
    /// reader), off the async threads: a package's headers checked against
    /// the metadata a peer sent with it.
    async fn inspect_stored<T, F>(&self, blob: &Digest, inspect: F) -> Result<T, CoreError>
    where
        T: Send + 'static,
        F: FnOnce(
                std::io::BufReader<
                    tokio_util::io::SyncIoBridge<
                        tokio_util::io::StreamReader<ferry_store::ByteStream, bytes::Bytes>,
                    >,
                >,
            ) -> Result<T, CoreError>
            + Send
            + 'static,
    {
        let body = self.read_blob(blob, None).await?.stream;
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(body));
        tokio::task::spawn_blocking(move || inspect(std::io::BufReader::new(reader)))
            .await
            .map_err(|e| CoreError::Internal(format!("package inspection failed: {e}")))?
    }

    /// Reads the stored `.nupkg` of item `key`, `len` bytes, where it lies, off the async
    /// threads: its nuspec as an upload's is read ([`nuget::inspect_nupkg`],
    /// with its limits) and its SHA-512, base64. Errors: Invalid for what
    /// an upload would be refused for.
    async fn inspect_nupkg_stored(
        &self,
        key: &str,
        blob: &Digest,
        len: u64,
    ) -> Result<(nuget::Nuspec, String), CoreError> {
        use sha2::Digest as _;
        let limits = self.config().archive;
        let key = key.to_owned();
        let reader = crate::blob_reader::SeekableBlob::new(
            self.clone(),
            *blob,
            len,
            tokio::runtime::Handle::current(),
        );
        tokio::task::spawn_blocking(move || -> Result<_, CoreError> {
            let mut reader = std::io::BufReader::new(reader);
            let spec = nuget::inspect_nupkg(&mut reader, &limits)
                .map_err(|e| CoreError::invalid(format!("nuget item {key}: {e}")))?;
            let mut hasher = sha2::Sha512::new();
            std::io::Seek::rewind(&mut reader).map_err(|e| CoreError::Internal(e.to_string()))?;
            std::io::copy(&mut reader, &mut hasher)
                .map_err(|e| CoreError::Internal(format!("hashing a stored .nupkg: {e}")))?;
            use base64::Engine as _;
            let sha512 = base64::engine::general_purpose::STANDARD.encode(hasher.finalize());
            Ok((spec, sha512))
        })
        .await
        .map_err(|e| CoreError::Internal(format!(".nupkg inspection failed: {e}")))?
    }

    /// The size of a blob a received item names; it must have been
    /// transferred first.
    /// `sizes`: what [`Ferry::present_blob_sizes`] found for the blobs of
    /// the batch; a blob not among them is looked up by itself.
    async fn replicated_blob_size(&self, key: &str, blob: &Digest, sizes: &Sizes) -> Result<u64, CoreError> {
        if let Some(size) = sizes.get(blob) {
            return Ok(*size);
        }
        let registered = self.0.meta.blob_present(blob).await?;
        match self.0.blobs.size(blob).await? {
            Some(size) if registered => Ok(size),
            _ => Err(CoreError::invalid(format!(
                "{key} needs blob {blob}, which is not stored here (send it first)"
            ))),
        }
    }

    /// The stored blob `blob` must hash to `sha512`, the digest an OCI item
    /// names it by (the blob store knows only its sha256 identity).
    async fn check_sha512(
        &self,
        key: &str,
        blob: &Digest,
        sha512: &oci::Sha512Digest,
        sizes: &Sizes,
    ) -> Result<(), CoreError> {
        self.replicated_blob_size(key, blob, sizes).await?;
        let mut hasher = oci::Sha512Hasher::default();
        let mut body = self.read_blob(blob, None).await?.stream;
        while let Some(chunk) = body.next().await {
            hasher.update(&chunk.map_err(|e| CoreError::Internal(e.to_string()))?);
        }
        let actual = hasher.finish();
        if actual != *sha512 {
            return Err(CoreError::invalid(format!(
                "OCI item {key}: blob {blob} hashes to {actual}, not {sha512} as the item says"
            )));
        }
        Ok(())
    }

    /// The stored blob must be as long as the item's metadata says.
    async fn check_size(
        &self,
        key: &str,
        blob: &Digest,
        claimed: Option<u64>,
        sizes: &Sizes,
    ) -> Result<(), CoreError> {
        let stored = self.replicated_blob_size(key, blob, sizes).await?;
        match claimed {
            Some(n) if n == stored => Ok(()),
            _ => Err(CoreError::invalid(format!(
                "{key}: its metadata says {} bytes, but its blob {blob} holds {stored}",
                claimed.map_or("no size".to_string(), |n| n.to_string())
            ))),
        }
    }
}
