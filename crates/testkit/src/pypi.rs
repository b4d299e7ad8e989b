//! Python distributions built byte by byte (stored zip, tar in a gzip of
//! stored deflate blocks), so tests need no archive library.

use ferry_types::Digest;

pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A zip archive of stored (uncompressed) entries.
pub fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let len = data.len() as u32;
        let n = name.len() as u16;
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        for v in [20u16, 0, 0, 0, 0x21] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [crc, len, len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);

        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        for v in [0x0314u16, 20, 0, 0, 0, 0x21] {
            central.extend_from_slice(&v.to_le_bytes());
        }
        for v in [crc, len, len] {
            central.extend_from_slice(&v.to_le_bytes());
        }
        for v in [n, 0, 0, 0, 0] {
            central.extend_from_slice(&v.to_le_bytes());
        }
        central.extend_from_slice(&(0o100644u32 << 16).to_le_bytes());
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    let cd_size = central.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    let count = entries.len() as u16;
    for v in [0u16, 0, count, count] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// A ustar archive of regular files (names up to 100 bytes, written raw).
pub fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in entries {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        h[136..148].copy_from_slice(b"14000000000\0");
        h[148..156].copy_from_slice(b"        ");
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// gzip of stored deflate blocks.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks: Vec<&[u8]> = data.chunks(65_535).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let last = chunks.len() - 1;
    for (i, c) in chunks.iter().enumerate() {
        out.push(u8::from(i == last));
        let len = c.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// URL-safe base64 without padding (wheel RECORD hashes).
pub fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    s
}

pub fn metadata(name: &str, version: &str, requires_python: Option<&str>) -> String {
    let rp = requires_python
        .map(|r| format!("Requires-Python: {r}\n"))
        .unwrap_or_default();
    format!(
        "Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: A test package\n{rp}\nLong description.\n"
    )
}

/// An installable pure-Python wheel of module `module` whose
/// `VERSION` is `version`, with a correct RECORD.
pub fn wheel(name: &str, version: &str, module: &str, requires_python: Option<&str>) -> (String, Vec<u8>) {
    let dist = name.replace(['-', '.'], "_");
    let info = format!("{dist}-{version}.dist-info");
    let files: Vec<(String, Vec<u8>)> = vec![
        (
            format!("{module}/__init__.py"),
            format!("VERSION = {version:?}\n").into_bytes(),
        ),
        (
            format!("{info}/METADATA"),
            metadata(name, version, requires_python).into_bytes(),
        ),
        (
            format!("{info}/WHEEL"),
            b"Wheel-Version: 1.0\nGenerator: ferry-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
                .to_vec(),
        ),
    ];
    let mut record = String::new();
    for (path, data) in &files {
        let hash = b64url(Digest::of(data).as_bytes());
        record.push_str(&format!("{path},sha256={hash},{}\n", data.len()));
    }
    record.push_str(&format!("{info}/RECORD,,\n"));
    let record_path = format!("{info}/RECORD");
    let mut entries: Vec<(&str, &[u8])> = files.iter().map(|(p, d)| (p.as_str(), d.as_slice())).collect();
    entries.push((&record_path, record.as_bytes()));
    (format!("{dist}-{version}-py3-none-any.whl"), zip(&entries))
}

/// A source distribution `{name}-{version}.tar.gz` with PKG-INFO and an
/// in-tree PEP 517 backend that prepares metadata without setuptools
/// (so pip can handle it offline).
pub fn sdist(name: &str, version: &str, requires_python: Option<&str>) -> (String, Vec<u8>) {
    let base = format!("{}-{version}", name.replace(['-', '.'], "_"));
    let pkg_info = metadata(name, version, requires_python);
    let pyproject = "[build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n";
    let backend = format!(
        "import os, shutil\n\
         def get_requires_for_build_wheel(config_settings=None):\n    return []\n\
         def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):\n    \
         d = os.path.join(metadata_directory, {info:?})\n    os.makedirs(d)\n    \
         shutil.copy('PKG-INFO', os.path.join(d, 'METADATA'))\n    return {info:?}\n",
        info = format!("{base}.dist-info")
    );
    let tar = tar(&[
        (&format!("{base}/PKG-INFO"), pkg_info.as_bytes()),
        (&format!("{base}/pyproject.toml"), pyproject.as_bytes()),
        (&format!("{base}/backend.py"), backend.as_bytes()),
    ]);
    (format!("{base}.tar.gz"), gzip(&tar))
}
