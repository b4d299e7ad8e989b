//! Debian packages built byte by byte, as dpkg-deb writes them: an `ar`
//! archive of `debian-binary`, `control.tar.*` and `data.tar.*`.

use std::io::Write;

/// How `control.tar` (and `data.tar`) are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gz,
    Xz,
    Zst,
}

fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).expect("tar path");
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append(&h, *data).expect("tar append");
    }
    tar.into_inner().expect("tar")
}

fn compress(data: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::Gz => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).expect("gz");
            e.finish().expect("gz")
        }
        Compression::Xz => {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
            e.write_all(data).expect("xz");
            e.finish().expect("xz")
        }
        Compression::Zst => zstd::stream::encode_all(data, 3).expect("zstd"),
    }
}

fn ext(c: Compression) -> &'static str {
    match c {
        Compression::Gz => "gz",
        Compression::Xz => "xz",
        Compression::Zst => "zst",
    }
}

/// A `.deb` whose control file is `control` and whose data holds one file
/// with `payload`.
pub fn deb(control: &str, payload: &[u8], c: Compression) -> Vec<u8> {
    let control_tar = compress(&tar(&[("./control", control.as_bytes())]), c);
    let data_tar = compress(&tar(&[("./usr/share/doc/test/payload", payload)]), c);
    let mut out = Vec::new();
    {
        let mut ar = ar::Builder::new(&mut out);
        for (name, data) in [
            ("debian-binary".to_string(), b"2.0\n".to_vec()),
            (format!("control.tar.{}", ext(c)), control_tar),
            (format!("data.tar.{}", ext(c)), data_tar),
        ] {
            let mut h = ar::Header::new(name.into_bytes(), data.len() as u64);
            h.set_mode(0o100644);
            ar.append(&h, &data[..]).expect("ar append");
        }
    }
    out
}

/// The control file of a small package.
pub fn control(name: &str, version: &str, arch: &str, extra: &str) -> String {
    format!(
        "Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: Test <test@example.com>\n\
         Installed-Size: 1\n{extra}Description: test package {name}\n a package built by the tests\n"
    )
}
