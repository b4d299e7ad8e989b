//! sha512 content end to end (issue 9, item 4): an image whose manifest,
//! config and layers are all named by sha512 digests is pushed over HTTP
//! to the real hub, verified there, replicated by the real engine to a
//! spoke, and served there under the same sha512 digests (and by tag);
//! a push whose bytes do not match its sha512 digest leaves nothing.
#![allow(clippy::unwrap_used)]
mod support;

use serde_json::json;
use sha2::{Digest as _, Sha256, Sha512};
use support::{Server, curl, curl_stdin, wait_until};

const SYNC: u64 = 30;
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(Sha512::digest(data)))
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// `curl -i` style: (status, headers lower-cased, body).
fn get(url: &str, auth: Option<&str>) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("h");
    let mut args = vec!["-D", headers.to_str().unwrap(), url];
    let user;
    if let Some(key) = auth {
        user = format!("ferry:{key}");
        args.extend(["-u", &user]);
    }
    let (st, body) = curl(&args);
    let h = std::fs::read_to_string(&headers)
        .unwrap_or_default()
        .to_ascii_lowercase();
    (st, h, body)
}

fn push_blob(hub: &Server, key: &str, repo: &str, digest: &str, data: &[u8]) -> (u16, String) {
    let url = format!("{}/v2/images/{repo}/blobs/uploads/?digest={digest}", hub.url);
    let user = format!("ferry:{key}");
    let (st, body) = curl_stdin(
        &[
            "-X",
            "POST",
            "-u",
            &user,
            "-H",
            "content-type: application/octet-stream",
            "--data-binary",
            "@-",
            &url,
        ],
        data,
    );
    (st, String::from_utf8_lossy(&body).to_string())
}

#[test]
fn an_image_named_by_sha512_digests_replicates_and_is_served_under_them() {
    let hub = Server::start();
    hub.create_feed("images", "oci");
    let token = hub.incoming("edge", &["images"], "push");
    let key = hub.key("ci", "write");

    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let layer: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for blob in [&config, &layer] {
        let (st, body) = push_blob(&hub, &key, "team/app", &sha512(blob), blob);
        assert_eq!(st, 201, "{body}");
    }
    // Bytes that are not what their sha512 digest says: refused, nothing kept.
    let (st, body) = push_blob(&hub, &key, "team/app", &sha512(b"other"), b"lying bytes");
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("DIGEST_INVALID"), "{body}");
    let (st, _, _) = get(
        &format!("{}/v2/images/team/app/blobs/{}", hub.url, sha256(b"lying bytes")),
        Some(&key),
    );
    assert_eq!(st, 404);

    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha512(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha512(&layer), "size": layer.len() }],
    }))
    .unwrap();
    let url = format!(
        "{}/v2/images/team/app/manifests/{}?tag=v1",
        hub.url,
        sha512(&manifest)
    );
    let user = format!("ferry:{key}");
    let (st, body) = curl_stdin(
        &[
            "-X",
            "PUT",
            "-u",
            &user,
            "-H",
            &format!("content-type: {MANIFEST}"),
            "--data-binary",
            "@-",
            &url,
        ],
        &manifest,
    );
    assert_eq!(st, 201, "{}", String::from_utf8_lossy(&body));

    let spoke = Server::start();
    spoke.create_feed("images", "oci");
    spoke.outgoing("from-hub", &["images"], &hub, &token, "pull", &[]);
    let on_spoke = |what: &str| format!("{}/v2/images/team/app/{what}", spoke.url);
    assert!(
        wait_until(SYNC, || get(&on_spoke("manifests/v1"), None).0 == 200),
        "the image did not reach the spoke"
    );
    let (st, headers, body) = get(&on_spoke(&format!("manifests/{}", sha512(&manifest))), None);
    assert_eq!(st, 200);
    assert_eq!(body, manifest);
    assert!(
        headers.contains(&format!("docker-content-digest: {}", sha512(&manifest))),
        "{headers}"
    );
    for blob in [&config, &layer] {
        let (st, headers, body) = get(&on_spoke(&format!("blobs/{}", sha512(blob))), None);
        assert_eq!(st, 200);
        assert!(body == *blob, "the spoke served other bytes");
        assert!(headers.contains(&format!("docker-content-digest: {}", sha512(blob))));
    }
    // The spoke resolved the aliases itself: a digest nothing holds is 404.
    let (st, _, _) = get(&on_spoke(&format!("blobs/{}", sha512(b"never pushed"))), None);
    assert_eq!(st, 404);
    assert!(spoke.verified("from-hub"));
}
