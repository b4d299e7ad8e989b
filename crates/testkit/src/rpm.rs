//! Builds small binary RPMs in memory (with the `rpm` crate's builder),
//! for tests and the bench's generated repositories.

/// What a generated package holds.
#[derive(Debug, Clone, Default)]
pub struct Spec<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub release: &'a str,
    pub arch: &'a str,
    pub epoch: u32,
    /// Plain requirements (`name` or `name >= ver` is not parsed: names only).
    pub requires: &'a [&'a str],
    /// Files: absolute path and content.
    pub files: &'a [(&'a str, &'a [u8])],
    /// Directories the package owns (empty ones), and ghost files.
    pub dirs: &'a [&'a str],
    pub ghosts: &'a [&'a str],
    /// Weak dependencies: recommended and suggested package names.
    pub recommends: &'a [&'a str],
    pub suggests: &'a [&'a str],
    /// A fixed build time (seconds), so that equal specs build equal bytes.
    pub build_time: u32,
}

/// The `.rpm` of `spec`, gzip-compressed payload, RPM v4.
pub fn rpm(spec: &Spec<'_>) -> Vec<u8> {
    let config = ::rpm::BuildConfig::v4()
        .compression(::rpm::CompressionType::Gzip)
        .source_date(spec.build_time);
    let mut b = ::rpm::PackageBuilder::new(spec.name, spec.version, "MIT", spec.arch, "a test package");
    b.using_config(config)
        .release(spec.release)
        .description(format!("{} is a package built by ferry's tests", spec.name))
        .build_host("ferry-test")
        .add_changelog_entry(
            "Ferry Test <test@ferry.invalid>",
            "- first build",
            spec.build_time,
        );
    if spec.epoch != 0 {
        b.epoch(spec.epoch);
    }
    for r in spec.requires {
        b.requires(::rpm::Dependency::any(*r));
    }
    for r in spec.recommends {
        b.recommends(::rpm::Dependency::any(*r));
    }
    for r in spec.suggests {
        b.suggests(::rpm::Dependency::any(*r));
    }
    for d in spec.dirs {
        b.with_dir_entry(::rpm::FileOptions::dir(*d))
            .expect("dir options");
    }
    for g in spec.ghosts {
        b.with_ghost(::rpm::FileOptions::ghost(*g))
            .expect("ghost options");
    }
    for (path, content) in spec.files {
        b.with_file_contents(content.to_vec(), ::rpm::FileOptions::new(*path))
            .expect("file options");
    }
    let pkg = b.build().expect("building an rpm");
    let mut out = Vec::new();
    pkg.write(&mut out).expect("writing an rpm");
    out
}
