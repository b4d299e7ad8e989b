//! Disaster recovery: a standby pulls everything from the primary,
//! deletions included; when the primary is lost, the standby is promoted
//! and serves spokes with the same content.
#![allow(clippy::unwrap_used)]
mod support;

use support::{Server, wait_until};

#[test]
fn a_standby_follows_the_primary_and_can_be_promoted() {
    let mut primary = Server::start();
    primary.create_feed("files", "assets");
    let token = primary.incoming("dr", &["files"], "push");
    for i in 0..20 {
        primary.put_asset("files", &format!("r/{i}"), format!("release {i}").as_bytes());
    }
    let standby = Server::start();
    standby.create_feed("files", "assets");
    standby.outgoing("from-primary", &["files"], &primary, &token, "pull", &[]);
    primary.delete_asset("files", "r/0");
    primary.put_asset("files", "r/5", b"release 5, fixed");
    assert!(
        wait_until(30, || standby.verified("from-primary")),
        "the standby did not converge"
    );
    assert!(standby.lacks("files", "r/0"));
    assert!(standby.serves("files", "r/5", b"release 5, fixed"));

    // The primary is lost. Promote the standby: it stops pulling and
    // accepts spokes in its place.
    primary.kill();
    standby.cli_ok(&["replication", "delete", "from-primary"]);
    let new_token = standby.incoming("edges", &["files"], "push");
    let spoke = Server::start();
    spoke.create_feed("files", "assets");
    spoke.outgoing("from-standby", &["files"], &standby, &new_token, "pull", &[]);
    assert!(wait_until(30, || spoke.verified("from-standby")));
    assert_eq!(
        spoke.asset_digests("files", "r/"),
        standby.asset_digests("files", "r/")
    );
    assert_eq!(spoke.asset_digests("files", "r/").len(), 19);
    // New publishes on the promoted standby reach the spoke.
    standby.put_asset("files", "r/20", b"after the failover");
    assert!(wait_until(30, || spoke.serves(
        "files",
        "r/20",
        b"after the failover"
    )));
}
