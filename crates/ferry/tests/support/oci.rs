//! OCI images without a container engine: image layouts (`oci-layout`,
//! `index.json`, `blobs/sha256/…`) written from Rust — random gzip'd tar
//! layers, a config, a manifest, a multi-arch index — and the real `skopeo`
//! to move them, isolated in a temporary home (its own blob-info cache and
//! auth file, so nothing it remembers leaks between tests).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_testkit::pypi::{gzip, tar};
use ferry_types::Digest;
use serde_json::{Value, json};

use super::{run_fail, run_ok, tool};

pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Random bytes (xorshift64*, seeded per call from the clock and a counter):
/// every layer is new content, so nothing is shared by accident.
pub fn random_bytes(len: usize) -> Vec<u8> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    Digest::of(data).to_string()
}

/// One content-addressed blob with its media type.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Self {
        Blob {
            media_type: media_type.to_string(),
            digest: digest(&bytes),
            bytes,
        }
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size() })
    }
}

/// A gzip'd tar layer and the digest of its uncompressed tar (the diff id).
#[derive(Clone, Debug)]
pub struct Layer {
    pub blob: Blob,
    pub diff_id: String,
}

/// A layer holding one file of `len` random bytes.
pub fn layer(len: usize) -> Layer {
    let data = random_bytes(len);
    let name = format!("data/{}.bin", &digest(&data)[7..23]);
    let tar = tar(&[(&name, &data)]);
    Layer {
        diff_id: digest(&tar),
        blob: Blob::new(LAYER, gzip(&tar)),
    }
}

/// A single-platform image: manifest, config and layers.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Layer>,
    pub arch: String,
}

impl Image {
    pub fn new(layers: Vec<Layer>, arch: &str) -> Self {
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": { "Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/true"] },
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": layers.iter().map(|_| json!({ "created_by": "ferry e2e" })).collect::<Vec<_>>(),
        });
        let config = Blob::new(CONFIG, serde_json::to_vec(&config).unwrap());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config.descriptor(),
            "layers": layers.iter().map(|l| l.blob.descriptor()).collect::<Vec<_>>(),
        });
        Image {
            manifest: Blob::new(MANIFEST, serde_json::to_vec_pretty(&manifest).unwrap()),
            config,
            layers,
            arch: arch.to_string(),
        }
    }

    /// Manifest, config and layers.
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut v = vec![&self.manifest, &self.config];
        v.extend(self.layers.iter().map(|l| &l.blob));
        v
    }

    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.blob.digest.clone()).collect()
    }
}

/// A multi-platform image: an OCI index over one image per architecture.
#[derive(Clone, Debug)]
pub struct MultiArch {
    pub index: Blob,
    pub images: Vec<Image>,
}

impl MultiArch {
    /// linux/amd64 and linux/arm64, each with a base layer of its own and
    /// `shared` on top.
    pub fn new(shared: &Layer) -> Self {
        let images: Vec<Image> = ["amd64", "arm64"]
            .iter()
            .map(|arch| Image::new(vec![layer(40_000), shared.clone()], arch))
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": images.iter().map(|i| {
                let mut d = i.manifest.descriptor();
                d["platform"] = json!({ "architecture": i.arch, "os": "linux" });
                d
            }).collect::<Vec<_>>(),
        });
        MultiArch {
            index: Blob::new(INDEX, serde_json::to_vec_pretty(&index).unwrap()),
            images,
        }
    }

    pub fn blobs(&self) -> Vec<&Blob> {
        let mut v = vec![&self.index];
        for i in &self.images {
            for b in i.blobs() {
                if !v.iter().any(|x| x.digest == b.digest) {
                    v.push(b);
                }
            }
        }
        v
    }

    pub fn image(&self, arch: &str) -> &Image {
        self.images.iter().find(|i| i.arch == arch).unwrap()
    }
}

/// An OCI image layout directory.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    /// Creates an empty layout at `dir`.
    pub fn create(dir: &Path) -> Self {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        std::fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&json!({ "schemaVersion": 2, "manifests": [] })).unwrap(),
        )
        .unwrap();
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    /// A layout some tool wrote (skopeo's destination).
    pub fn open(dir: &Path) -> Self {
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    /// Writes `blobs` and tags `top` (a manifest or an index) as `tag`.
    pub fn add(&self, tag: &str, top: &Blob, blobs: &[&Blob]) {
        for b in blobs.iter().chain([&top]) {
            std::fs::write(self.blob_path(&b.digest), &b.bytes).unwrap();
        }
        let mut index = self.index();
        let mut d = top.descriptor();
        d["annotations"] = json!({ REF_NAME: tag });
        index["manifests"].as_array_mut().unwrap().push(d);
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }

    pub fn add_image(&self, tag: &str, image: &Image) {
        self.add(tag, &image.manifest, &image.blobs());
    }

    pub fn add_multi(&self, tag: &str, multi: &MultiArch) {
        self.add(tag, &multi.index, &multi.blobs());
    }

    pub fn index(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("index.json")).unwrap()).unwrap()
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").expect("a sha256 digest"))
    }

    pub fn blob(&self, digest: &str) -> Option<Vec<u8>> {
        std::fs::read(self.blob_path(digest)).ok()
    }

    /// The descriptor tagged `tag` in `index.json`.
    pub fn tagged(&self, tag: &str) -> Option<Value> {
        self.index()["manifests"]
            .as_array()?
            .iter()
            .find(|d| d["annotations"][REF_NAME] == tag)
            .cloned()
    }

    /// Asserts that `tag` names `top` and that every one of `blobs` is here
    /// byte for byte: what a pull that changed nothing leaves.
    pub fn assert_holds(&self, tag: &str, top: &Blob, blobs: &[&Blob]) {
        let d = self
            .tagged(tag)
            .unwrap_or_else(|| panic!("{tag} not in {}: {:#}", self.dir.display(), self.index()));
        assert_eq!(d["digest"], top.digest.as_str(), "{tag} names another manifest");
        assert_eq!(d["mediaType"], top.media_type.as_str());
        assert_eq!(d["size"], top.size());
        for b in blobs.iter().chain([&top]) {
            let got = self.blob(&b.digest).unwrap_or_else(|| {
                panic!(
                    "blob {} ({}) missing from the pulled layout",
                    b.digest, b.media_type
                )
            });
            assert!(got == b.bytes, "blob {} differs after the round trip", b.digest);
        }
    }
}

/// The real `skopeo`, with a home of its own.
pub struct Skopeo {
    home: tempfile::TempDir,
}

impl Default for Skopeo {
    fn default() -> Self {
        Self::new()
    }
}

impl Skopeo {
    pub fn new() -> Self {
        let home = tempfile::tempdir().unwrap();
        let run = home.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        Skopeo { home }
    }

    /// `skopeo ARGS` (plain HTTP is allowed per command with `--*-tls-verify=false`).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(tool("skopeo"));
        let home = self.home.path();
        c.arg("--insecure-policy")
            .args(args)
            .env("HOME", home)
            .env("XDG_DATA_HOME", home.join("share"))
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_RUNTIME_DIR", home.join("run"))
            // As root, containers/image keeps its blob-info cache (which
            // remembers where blobs were seen, and so changes later copies)
            // in /var/lib/containers; as a user, under XDG_DATA_HOME.
            .env("_CONTAINERS_ROOTLESS_UID", "65534")
            .env("TMPDIR", home);
        c
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        run_ok(&mut self.cmd(args))
    }

    pub fn fails(&self, args: &[&str]) -> String {
        let out = run_fail(&mut self.cmd(args));
        String::from_utf8_lossy(&out.stderr).to_string()
    }

    /// `skopeo copy oci:LAYOUT:TAG docker://DEST` with the given key (`--all` for indexes).
    pub fn push(&self, layout: &Layout, tag: &str, dest: &str, key: Option<&str>) -> Output {
        let src = format!("oci:{}:{tag}", layout.dir.display());
        let dest = format!("docker://{dest}");
        let creds = key.map(|k| format!("ferry:{k}"));
        let mut args = vec!["copy", "--all", "--dest-tls-verify=false", &src, &dest];
        if let Some(c) = &creds {
            args.extend(["--dest-creds", c]);
        }
        self.cmd(&args).output().unwrap()
    }

    pub fn push_ok(&self, layout: &Layout, tag: &str, dest: &str, key: &str) {
        let out = self.push(layout, tag, dest, Some(key));
        assert!(
            out.status.success(),
            "skopeo copy to {dest} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `skopeo copy --all docker://SRC oci:OUT:TAG` (anonymous without a key).
    pub fn pull(&self, src: &str, out: &Path, tag: &str, key: Option<&str>) -> Output {
        let src = format!("docker://{src}");
        let dest = format!("oci:{}:{tag}", out.display());
        let creds = key.map(|k| format!("ferry:{k}"));
        let mut args = vec!["copy", "--all", "--src-tls-verify=false", &src, &dest];
        if let Some(c) = &creds {
            args.extend(["--src-creds", c]);
        }
        self.cmd(&args).output().unwrap()
    }

    pub fn pull_ok(&self, src: &str, out: &Path, tag: &str, key: Option<&str>) -> Layout {
        let o = self.pull(src, out, tag, key);
        assert!(
            o.status.success(),
            "skopeo copy from {src} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Layout::open(out)
    }

    /// `skopeo inspect [--raw] docker://REF`: stdout, or the error text.
    pub fn inspect(
        &self,
        reference: &str,
        raw: bool,
        key: Option<&str>,
        extra: &[&str],
    ) -> Result<Vec<u8>, String> {
        let r = format!("docker://{reference}");
        let creds = key.map(|k| format!("ferry:{k}"));
        let mut args = vec!["inspect", "--tls-verify=false"];
        if raw {
            args.push("--raw");
        }
        if let Some(c) = &creds {
            args.extend(["--creds", c]);
        }
        args.extend(extra);
        args.push(&r);
        let out = self.cmd(&args).output().unwrap();
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    /// The tags `skopeo list-tags` reports for a repository, sorted.
    pub fn tags(&self, repo: &str, key: Option<&str>) -> Result<Vec<String>, String> {
        let r = format!("docker://{repo}");
        let creds = key.map(|k| format!("ferry:{k}"));
        let mut args = vec!["list-tags", "--tls-verify=false"];
        if let Some(c) = &creds {
            args.extend(["--creds", c]);
        }
        args.push(&r);
        let out = self.cmd(&args).output().unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).to_string());
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut tags: Vec<String> = v["Tags"]
            .as_array()
            .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        tags.sort();
        Ok(tags)
    }

    /// `skopeo delete docker://REF` (the manifest the reference names).
    pub fn delete(&self, reference: &str, key: &str) -> Output {
        let r = format!("docker://{reference}");
        let creds = format!("ferry:{key}");
        self.cmd(&["delete", "--tls-verify=false", "--creds", &creds, &r])
            .output()
            .unwrap()
    }
}
