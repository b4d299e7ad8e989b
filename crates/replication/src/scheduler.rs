//! When executions run: every `interval_secs`, on demand, as soon as the
//! other side's change log grows (long polling, for pulling replications),
//! and shortly after a local change (for pushing ones). One execution per
//! replication at a time; a wake-up during an execution runs another after.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_store::now_millis;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::Replicator;
use crate::config::{Communication, ReplicationConfig};
use crate::engine::{Direction, Lag, PAGE, cursor_name};
use crate::protocol::PageExtras;

const LONG_POLL_SECS: u64 = 25;
/// First and longest wait before a failed long poll is tried again.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(3);
const DEBOUNCE: Duration = Duration::from_millis(150);
/// Longest wait, in seconds, before a long poll the other side refused is
/// asked again.
const REFUSED_MAX: u64 = 300;
/// The first wait before asking again for a feed the other side refused.
const FEED_REFUSED_MIN: Duration = Duration::from_secs(1);

/// Whether `e` is the other side's answer refusing the request (not a
/// broken link or a restart, which a reconnect soon may cure).
fn refused(e: &crate::ReplError) -> bool {
    use crate::ReplError::*;
    matches!(e, Unauthorized(_) | Forbidden(_) | Refused(_))
        || matches!(e, Remote { status, .. } if (400..500).contains(status) && !matches!(status, 408 | 409 | 429))
}

/// Whether `e` says the other side's replication changed under the
/// request (409: its filters changed while a long poll waited): not a
/// refusal; the next execution handshakes again and runs at once.
fn changed_there(e: &crate::ReplError) -> bool {
    matches!(e, crate::ReplError::Remote { status: 409, .. })
}

/// What wakes a replication's main loop: something to move (a long poll's
/// answer, a local change, a changed configuration), or an operator's
/// "Run now" (`manual`, which also resumes a stopped replication before
/// its schedule).
#[derive(Default)]
pub(crate) struct Wake {
    notify: Notify,
    manual: std::sync::atomic::AtomicBool,
    /// Told when the other side's replication changed (its feeds, its
    /// filters, what its handshake refuses): a watcher waiting out a
    /// refusal asks again at once (a feed the hub refused may be served
    /// again).
    recheck: Notify,
}

impl Wake {
    fn change(&self) {
        self.notify.notify_one();
    }
}

/// A running replication's wake-up signal and its tasks.
type Tasks = (Arc<Wake>, Vec<JoinHandle<()>>);

#[derive(Default)]
pub(crate) struct Scheduler {
    tasks: Mutex<HashMap<i64, Tasks>>,
}

impl Scheduler {
    pub fn start(&self, r: Replicator, id: i64, name: String) {
        let Ok(mut tasks) = self.tasks.lock() else { return };
        if tasks.contains_key(&id) {
            return;
        }
        let wake = Arc::new(Wake::default());
        let mut handles = vec![tokio::spawn(main_loop(r.clone(), id, name.clone(), wake.clone()))];
        handles.push(tokio::spawn(watchers(r, id, name, wake.clone())));
        tasks.insert(id, (wake, handles));
    }

    /// Replaces the watchers of a running replication (after its URL or
    /// token changed); its main loop, and any execution in it, go on.
    pub fn restart_watchers(&self, r: Replicator, id: i64, name: String) {
        let Ok(mut tasks) = self.tasks.lock() else { return };
        let Some((wake, handles)) = tasks.get_mut(&id) else {
            return;
        };
        for h in handles.drain(1..) {
            h.abort();
        }
        handles.push(tokio::spawn(watchers(r, id, name, wake.clone())));
    }

    pub fn stop(&self, id: i64) {
        if let Ok(mut tasks) = self.tasks.lock()
            && let Some((_, handles)) = tasks.remove(&id)
        {
            for h in handles {
                h.abort();
            }
        }
    }

    /// The replications scheduled here.
    pub fn ids(&self) -> Vec<i64> {
        self.tasks
            .lock()
            .map(|t| t.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Stops every replication's tasks (the instance is shutting down).
    pub fn stop_all(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for (_, (_, handles)) in tasks.drain() {
                for h in handles {
                    h.abort();
                }
            }
        }
    }

    /// Tells the watchers of replication `id` that wait out a refusal to
    /// ask again now ([`Wake::recheck`]).
    pub fn recheck(&self, id: i64) {
        if let Ok(tasks) = self.tasks.lock()
            && let Some((wake, _)) = tasks.get(&id)
        {
            wake.recheck.notify_waiters();
        }
    }

    pub fn wake(&self, id: i64) {
        if let Ok(tasks) = self.tasks.lock()
            && let Some((wake, _)) = tasks.get(&id)
        {
            wake.change();
        }
    }

    /// An operator's "Run now": the execution it starts is recorded with
    /// trigger `manual`, and it runs even after a stop.
    pub fn wake_manual(&self, id: i64) {
        if let Ok(tasks) = self.tasks.lock()
            && let Some((wake, _)) = tasks.get(&id)
        {
            wake.manual.store(true, std::sync::atomic::Ordering::SeqCst);
            wake.notify.notify_one();
        }
    }
}

async fn load(r: &Replicator, name: &str) -> Option<ReplicationConfig> {
    let rec = r.store().replication(name).await.ok()??;
    serde_json::from_value(rec.config).ok()
}

async fn main_loop(r: Replicator, id: i64, name: String, wake: Arc<Wake>) {
    let mut trigger = "schedule";
    let mut failures: u32 = 0;
    // Stopped by an operator before this instance (re)started: it stays
    // stopped until its schedule comes round or "Run now".
    let mut held_since = match r.store().executions(id, 1).await {
        Ok(list) => list
            .into_iter()
            .next()
            .filter(|e| e.outcome.as_deref() == Some("stopped"))
            .map(|e| e.ended_at.unwrap_or(e.started_at)),
        Err(_) => None,
    };
    // When this loop was last woken (a change noticed, a schedule due).
    let mut woken_at = now_millis();
    loop {
        let Some(cfg) = load(&r, &name).await else { return };
        let interval = Duration::from_secs(cfg.interval_secs);
        let covered = covered_by_another_node(&r, id, trigger, woken_at, interval).await;
        let (failed, stopped, delay) = if let Some(since) = held_since.take() {
            let left = since
                .saturating_add(millis(interval))
                .saturating_sub(now_millis())
                .max(0);
            (false, true, Duration::from_millis(left as u64))
        } else if let Some(next) = covered {
            // Another node of the instance ran (or runs) it: this node's
            // turn comes an interval after that execution started.
            (false, false, next)
        } else {
            // "Run now" waits for an execution running on another node
            // to end, then runs; the schedule just skips its turn.
            let run = if trigger == "manual" {
                r.run(&name, trigger, false, false).await.map(Some)
            } else {
                r.run_if_idle(id, trigger).await
            };
            let (failed, stopped) = match run {
                Ok(Some(res)) => (res.outcome == "failed", res.outcome == "stopped"),
                Ok(None) => (false, false),
                Err(e) => {
                    tracing::warn!(target: "replication", replication = %name, error = %e, "execution could not start");
                    (true, false)
                }
            };
            (failed, stopped, interval)
        };
        failures = if failed { failures.saturating_add(1) } else { 0 };
        let delay = if failed {
            interval.min(Duration::from_secs(1 << failures.min(6)))
        } else {
            delay
        };
        // Saturating: a stored interval past what is accepted now (or any
        // delay too far ahead) waits as long as it can, never panics.
        r.set_next_run(id, now_millis().saturating_add(millis(delay)));
        let due = due_after(tokio::time::Instant::now(), delay);
        trigger = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => break "schedule",
                _ = wake.notify.notified() => {
                    if wake.manual.swap(false, std::sync::atomic::Ordering::SeqCst) {
                        break "manual";
                    }
                    // An operator stopped the last execution: what the
                    // other side has waits for the schedule or "Run now".
                    if !stopped {
                        break "change";
                    }
                }
            }
        };
        woken_at = now_millis();
    }
}

/// On a store shared by several nodes, whether another node's execution
/// already does what this wake-up asks (every node keeps its own schedule
/// and hears the same changes; without this each would run once per
/// interval and once per change): for a schedule, an execution that
/// started less than `interval` ago; for a change, one that started after
/// this node heard of it (it reads from the cursor on, so it carries the
/// change; the node running it, woken too, runs again after it if it
/// started too early). Returns when this node's schedule comes round next,
/// or None to run now. An operator's "Run now" and a takeover always run;
/// a store error runs (the lease still keeps executions one at a time).
async fn covered_by_another_node(
    r: &Replicator,
    id: i64,
    trigger: &str,
    woken_at: i64,
    interval: Duration,
) -> Option<Duration> {
    if !r.store().shared_by_nodes() || !matches!(trigger, "schedule" | "change") {
        return None;
    }
    let last = r.store().executions(id, 1).await.ok()?.into_iter().next()?;
    let interval_ms = millis(interval);
    let now = now_millis();
    let covered = match trigger {
        "schedule" => last.started_at.saturating_add(interval_ms) > now,
        _ => last.started_at >= woken_at,
    };
    covered.then(|| {
        Duration::from_millis(
            (last.started_at.saturating_add(interval_ms) - now).clamp(1000, interval_ms.max(1000)) as u64,
        )
    })
}

/// `d` in milliseconds, saturating (a stored interval too long for an
/// i64 of milliseconds waits as long as one can say).
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// When a wait of `delay` from `now` ends: at most [`MAX_INTERVAL_SECS`]
/// ahead when `delay` is too long for the clock (never a panic).
///
/// [`MAX_INTERVAL_SECS`]: crate::config::MAX_INTERVAL_SECS
fn due_after(now: tokio::time::Instant, delay: Duration) -> tokio::time::Instant {
    now.checked_add(delay)
        .unwrap_or_else(|| now + Duration::from_secs(crate::config::MAX_INTERVAL_SECS))
}

/// Wakes the main loop when there is something to move.
async fn watchers(r: Replicator, id: i64, name: String, wake: Arc<Wake>) {
    let Some(cfg) = load(&r, &name).await else { return };
    let Communication::Outgoing { url, token } = &cfg.communication else {
        return;
    };
    let remote = r.remote(url, token);
    let inline_max = cfg.inline_from_peer();
    let blob_sizes = cfg.sizes_from_peer();
    let mut tasks = Vec::new();
    for pair in cfg.feeds.clone() {
        if cfg.mode.flows.pulls() {
            let (r, remote, wake, name, pair) = (
                r.clone(),
                remote.clone(),
                wake.clone(),
                name.clone(),
                pair.clone(),
            );
            let cursor_name = cursor_name(Direction::Pull, &pair.local, &pair.remote);
            let anchor_name = format!("{cursor_name}:anchor");
            tasks.push(tokio::spawn(async move {
                let mut backoff = RECONNECT_MIN;
                // Whether the last long poll was refused.
                let mut refused_last = false;
                // The next wait after the other side refuses this feed.
                let mut feed_backoff = FEED_REFUSED_MIN;
                loop {
                    let cursor = r.store().cursor(id, &cursor_name).await.unwrap_or(0);
                    let anchor = r.store().cursor(id, &anchor_name).await.unwrap_or(0);
                    // A whole page, with small blobs inline: the execution it
                    // wakes starts from it, without asking again.
                    let extras = PageExtras {
                        count_deletes: cfg.mode.flows.delete_local,
                        // The page may start the next execution, whose
                        // progress is judged by bytes (a small sum for a
                        // small change).
                        count_bytes: true,
                        bytes_after: None,
                        inline_max,
                        blob_sizes,
                    };
                    match remote
                        .changes(&pair.remote, cursor, anchor, PAGE, LONG_POLL_SECS, extras)
                        .await
                    {
                        Ok(page) if page.next > cursor || page.reset => {
                            backoff = RECONNECT_MIN;
                            refused_last = false;
                            feed_backoff = FEED_REFUSED_MIN;
                            r.set_reachable(id, None);
                            r.set_id_shared(id, page.id_shared.clone());
                            if page.handshake_again {
                                r.forget_handshake(id);
                            }
                            // Another node of the instance, woken by the same
                            // change, may have applied it meanwhile: nothing
                            // to run for (poll again from where it got).
                            if !page.reset
                                && r.store().cursor(id, &cursor_name).await.unwrap_or(0) >= page.next
                            {
                                continue;
                            }
                            let seconds = page
                                .oldest_pending
                                .map_or(0.0, |t| (now_millis() as f64 - t as f64).max(0.0) / 1000.0);
                            r.set_lag(id, &pair.local, Lag::now(page.last_seq - cursor, seconds));
                            if !page.reset {
                                r.keep_polled(id, &pair.local, cursor, anchor, page);
                            }
                            wake.change();
                            // Wait for an execution to move the cursor before polling again.
                            for _ in 0..600 {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                if r.store().cursor(id, &cursor_name).await.unwrap_or(0) != cursor {
                                    break;
                                }
                            }
                        }
                        Ok(page) => {
                            backoff = RECONNECT_MIN;
                            refused_last = false;
                            feed_backoff = FEED_REFUSED_MIN;
                            r.set_reachable(id, None);
                            r.set_id_shared(id, page.id_shared.clone());
                            if page.handshake_again {
                                // Forgotten there: an execution shakes
                                // hands again (at most once per poll).
                                r.forget_handshake(id);
                                wake.change();
                            }
                            // Nothing past the cursor: up to date, as of now.
                            r.set_lag(id, &pair.local, Lag::now((page.last_seq - cursor).max(0), 0.0));
                        }
                        Err(e) if changed_there(&e) => {
                            tracing::debug!(target: "replication", replication = %name, error = %e, "the other side's replication changed");
                            r.forget_handshake(id);
                            wake.change();
                            wake.recheck.notify_waiters();
                            tokio::time::sleep(RECONNECT_MAX).await;
                        }
                        Err(e) if refused(&e) => {
                            // The other side answered and said no (a revoked
                            // token, a changed replication): asking again at
                            // once changes nothing. Ask again on the
                            // replication's schedule, and every 5 minutes
                            // at least. The first refusal runs an execution
                            // at once, which records the error as the
                            // replication's state (it showed its last
                            // success until its next scheduled execution).
                            tracing::debug!(target: "replication", replication = %name, error = %e, "long poll refused");
                            if !refused_last {
                                refused_last = true;
                                wake.change();
                            }
                            backoff = RECONNECT_MIN;
                            let cap = Duration::from_secs(cfg.interval_secs.clamp(RECONNECT_MAX.as_secs(), REFUSED_MAX));
                            // A feed the other side no longer serves (403)
                            // is often put back soon (a configuration
                            // mistake undone): asked again after 1 s, then
                            // twice as long each time up to the pace
                            // above. A refused token waits the whole pace.
                            let wait = if matches!(e, crate::ReplError::Forbidden(_)) {
                                let w = feed_backoff.min(cap);
                                feed_backoff = (feed_backoff * 2).min(cap);
                                w
                            } else {
                                cap
                            };
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {}
                                _ = wake.recheck.notified() => {}
                            }
                        }
                        Err(e) => {
                            // The other side restarting, or the link down:
                            // reconnect soon (a spoke's lag after a hub
                            // restart is about the restart), then back off.
                            tracing::debug!(target: "replication", replication = %name, error = %e, "long poll failed");
                            r.set_reachable(id, Some(&e));
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(RECONNECT_MAX);
                        }
                    }
                }
            }));
        }
        if cfg.mode.flows.pushes() {
            let (r, wake) = (r.clone(), wake.clone());
            tasks.push(tokio::spawn(async move {
                let Ok(feed) = r.ferry().feed(&pair.local).await else {
                    return;
                };
                let Ok(mut rx) = r.ferry().subscribe(feed.id).await else {
                    return;
                };
                let cursor_name = cursor_name(Direction::Push, &pair.local, &pair.remote);
                while rx.changed().await.is_ok() {
                    tokio::time::sleep(DEBOUNCE).await;
                    rx.borrow_and_update();
                    // Already pushed (by another node of the instance, woken
                    // by the same write): nothing to run for.
                    let pushed = r.store().cursor(id, &cursor_name).await.unwrap_or(0);
                    let last = r.ferry().metadata().last_seq(feed.id).await.unwrap_or(i64::MAX);
                    if pushed >= last {
                        continue;
                    }
                    wake.change();
                }
            }));
        }
    }
    // Tied to this task: aborting it (scheduler stop) must end the watchers too.
    let _guard = AbortOnDrop(tasks);
    std::future::pending::<()>().await;
}

struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_too_long_for_the_clock_waits_the_longest_interval() {
        let now = tokio::time::Instant::now();
        let due = due_after(now, Duration::from_secs(u64::MAX));
        assert_eq!(due - now, Duration::from_secs(crate::config::MAX_INTERVAL_SECS));
        assert_eq!(
            due_after(now, Duration::from_secs(60)) - now,
            Duration::from_secs(60)
        );
    }
}
