//! The cgroups given on the command line (`--cgroup`), followed for as long as the agent runs.
//!
//! A cgroup is known by its id (the directory's inode), not its path: a service restart that
//! removes the cgroup and creates it again at the same path (systemd does) makes a new cgroup
//! the old attachment does not see. Every interval each path is looked up again: a new id is
//! re-attached, a missing directory is detached and waited for, a cgroup missing at start is
//! attached when it appears. Each change is logged and counted; a cgroup waited for is never
//! listed as attached (`kite_static_cgroups{state="waiting"}`).

use std::{path::PathBuf, time::Duration};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    dataplane::DataPlane,
    state::{Shared, Source},
};
use crate::{Error, cgroup::Hierarchy};

/// One `--cgroup` and the id it is attached with (`None`: waited for).
struct Followed {
    path: PathBuf,
    /// The path as the hierarchy names it (`/a/b`), once known.
    name: Option<String>,
    id: Option<u64>,
}

/// Attaches the given cgroups that exist now, then follows all of them until `shutdown`.
/// With `must_exist`, a missing one is an error instead of waited for.
pub async fn start(
    paths: &[PathBuf],
    must_exist: bool,
    hierarchy: Hierarchy,
    dataplane: DataPlane,
    shared: Shared,
    every: Duration,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, Error> {
    let mut followed = Vec::new();
    for p in paths {
        match hierarchy.cgroup(p) {
            Ok(cg) => {
                let r = dataplane.attach(cg.clone(), Source::Static, None).await?;
                info!(cgroup = %cg.path, id = cg.id, "attached: {r:?}");
                followed.push(Followed {
                    path: p.clone(),
                    name: Some(cg.path),
                    id: Some(cg.id),
                });
            }
            Err(e @ Error::NoSuchCgroup { .. }) if !must_exist => {
                warn!(
                    "{e}: waiting for it to appear (--missing-cgroup fail refuses to start instead)"
                );
                followed.push(Followed {
                    path: p.clone(),
                    name: None,
                    id: None,
                });
            }
            Err(e) => return Err(e),
        }
    }
    publish(&shared, &followed);
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for f in &mut followed {
                check(f, &hierarchy, &dataplane, &shared).await;
            }
            publish(&shared, &followed);
        }
    }))
}

async fn check(f: &mut Followed, hierarchy: &Hierarchy, dataplane: &DataPlane, shared: &Shared) {
    let now = hierarchy.cgroup(&f.path).ok();
    if now.as_ref().map(|c| c.id) == f.id {
        return;
    }
    // Gone or replaced: the old attachment sees nothing any more.
    if let (Some(old), Some(name)) = (f.id, f.name.as_ref()) {
        if let Err(e) = dataplane.detach(name.clone()).await {
            warn!(cgroup = %name, "detaching the old cgroup: {e}");
        }
        f.id = None;
        if now.is_none() {
            warn!(cgroup = %name, id = old, "cgroup removed: detached, waiting for it to come back");
            shared.write().agent.static_removed += 1;
        }
    }
    let Some(cg) = now else { return };
    match dataplane.attach(cg.clone(), Source::Static, None).await {
        Ok(r) => {
            let was = f.name.is_some();
            info!(
                cgroup = %cg.path, id = cg.id,
                "cgroup {}: attached ({r:?})",
                if was { "re-created" } else { "appeared" }
            );
            f.name = Some(cg.path);
            f.id = Some(cg.id);
            shared.write().agent.static_attached_later += 1;
        }
        Err(e) => warn!(cgroup = %cg.path, "attaching: {e}"),
    }
}

fn publish(shared: &Shared, followed: &[Followed]) {
    let waiting = followed
        .iter()
        .filter(|f| f.id.is_none())
        .map(|f| f.path.display().to_string())
        .collect();
    shared.write().waiting_cgroups = waiting;
}
