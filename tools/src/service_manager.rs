//! What the node tells its service manager (systemd's `Type=notify`, `sd_notify(3)`): ready
//! once every listener is bound and every shard open, reloading and stopping, a status line,
//! and the watchdog's keep-alive, sent only while every core still runs tasks, so a node with
//! a core stuck is restarted rather than left half-alive. Outside systemd (no
//! `NOTIFY_SOCKET`) every call does nothing.

use std::time::Duration;

use porcupine_cluster::node::core_call::Router;
use sd_notify::NotifyState;

/// Tells the service manager the node serves; `status` is what `systemctl status` shows.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A SIGHUP reload begins (`Type=notify-reload` wants the monotonic time with it).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// The reload is over.
pub fn reloaded() {
    notify(&[NotifyState::Ready]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn notify(state: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(false, state) {
        tracing::warn!(%error, "could not notify the service manager");
    }
}

/// Starts the watchdog's keep-alive if the service manager asked for one (`WatchdogSec=`):
/// twice per period, every core is asked to run a task; `WATCHDOG=1` goes out only when all
/// of them did within half a period. A core that does not answer is logged, and the service
/// manager, hearing nothing, restarts the node.
pub fn start_watchdog(router: Router) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec);
    let half = period / 2;
    tracing::info!(
        period_ms = period.as_millis() as u64,
        "the service manager's watchdog is on"
    );
    let spawned = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let mut stuck: Option<usize> = None;
            loop {
                let started = std::time::Instant::now();
                match router.ping_each(half) {
                    Ok(()) => {
                        if stuck.take().is_some() {
                            tracing::info!("every core answers again");
                        }
                        notify(&[NotifyState::Watchdog]);
                    }
                    Err(core) => {
                        if stuck != Some(core) {
                            tracing::error!(
                                core,
                                "a core did not run a task within half the watchdog period: \
                                 no keep-alive, the service manager will restart the node"
                            );
                            stuck = Some(core);
                        }
                    }
                }
                std::thread::sleep(half.saturating_sub(started.elapsed()));
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "could not start the watchdog thread");
    }
}
