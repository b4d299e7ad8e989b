//! `ferry-gen-rpms DIR COUNT PREFIX`: writes COUNT small valid binary RPMs
//! (`PREFIX-NNNNNN-1.0-1.noarch.rpm`, one file each, a requirement on the
//! previous one) into DIR, for bench/rpm.sh. Far faster than rpmbuild.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, count, prefix] = args.as_slice() else {
        eprintln!("usage: ferry-gen-rpms DIR COUNT PREFIX");
        std::process::exit(2);
    };
    let count: usize = count.parse().unwrap_or_else(|_| {
        eprintln!("COUNT must be a number");
        std::process::exit(2)
    });
    let dir = std::path::Path::new(dir);
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("{}: {e}", dir.display());
        std::process::exit(1);
    }
    for i in 0..count {
        let name = format!("{prefix}-{i:06}");
        let prev = (i > 0).then(|| format!("{prefix}-{:06}", i - 1));
        let requires: Vec<&str> = prev.iter().map(String::as_str).collect();
        let path = format!("/usr/share/{name}/data.txt");
        let content = format!("{name}\n");
        let rpm = ferry_testkit::rpm::rpm(&ferry_testkit::rpm::Spec {
            name: &name,
            version: "1.0",
            release: "1",
            arch: "noarch",
            requires: &requires,
            files: &[(path.as_str(), content.as_bytes())],
            build_time: 1_700_000_000,
            ..Default::default()
        });
        let file = dir.join(format!("{name}-1.0-1.noarch.rpm"));
        if let Err(e) = std::fs::write(&file, rpm) {
            eprintln!("{}: {e}", file.display());
            std::process::exit(1);
        }
    }
}
