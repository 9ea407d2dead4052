//! A reload (`migserve reload`, SIGHUP, `POST /reload`): the config is read again and the
//! difference from what runs is applied. Workers whose model and settings are unchanged keep
//! running; workers of removed or changed models are drained (changed pinned ones started
//! again); pinned replicas added are placed; replicas past a lowered limit leave. A config
//! that does not parse or whose pinned replicas do not place is refused whole.

use std::collections::BTreeSet;

use serde::Serialize;

use super::drain::DrainReason;
use super::state::{lock, PendingLoad, Phase, State};
use super::Fleet;
use crate::config::placement::{place_pinned, Kept, Sharing};
use crate::config::{ConfigSource, DeployConfig, ModelSection};

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    /// Models newly catalogued.
    pub added: Vec<String>,
    /// Models no longer catalogued (their workers drain).
    pub removed: Vec<String>,
    /// Models whose file, device or engine settings changed (their workers restart).
    pub changed: Vec<String>,
    /// Pinned replicas placed (`model@slice`).
    pub started: Vec<String>,
    /// Workers drained (`model@slice`).
    pub stopped: Vec<String>,
    /// Models left as they were (their workers keep running).
    pub unchanged: Vec<String>,
    /// Settings that changed but take a restart of `serve` to apply.
    pub needs_restart: Vec<String>,
}

/// Whether a model's workers must restart for `new`: its file, device or engine settings
/// changed (its pins and limits are not worker settings).
fn worker_settings_changed(old: &ModelSection, new: &ModelSection) -> bool {
    old.path != new.path || old.device != new.device || old.engine != new.engine
}

/// Sections a running `serve` cannot change.
fn needs_restart(old: &DeployConfig, new: &DeployConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &str, same: bool| {
        if !same {
            out.push(name.to_string());
        }
    };
    check("listen", old.listen == new.listen);
    check("[slices]", old.slices == new.slices);
    check("[supervisor]", old.supervisor == new.supervisor);
    check("[router]", old.router == new.router);
    check("[[remote]]", old.remote == new.remote);
    check("[[discover]]", old.discover == new.discover);
    out
}

impl Fleet {
    /// Where the config is read from on a reload.
    pub fn set_source(&self, source: ConfigSource) {
        if let Ok(mut s) = self.source.lock() {
            *s = source;
        }
    }

    /// Reads the config again from where it came from and applies it ([`Fleet::reload`]).
    pub fn reload_from_source(&self) -> Result<ReloadReport, String> {
        let source = self
            .source
            .lock()
            .map(|s| s.clone())
            .unwrap_or(ConfigSource::Embedded);
        let config = DeployConfig::load(&source).map_err(|e| e.to_string())?;
        self.reload(config)
    }

    /// Applies `new`, or refuses it whole (nothing changes) with the reason.
    pub fn reload(&self, new: DeployConfig) -> Result<ReloadReport, String> {
        let report = {
            let mut st = lock(&self.state);
            let st = &mut *st;
            if st.closing {
                return Err("the server is shutting down".into());
            }
            self.apply(st, new)?
        };
        self.bump();
        self.read_footprints();
        tracing::info!(
            added = ?report.added,
            removed = ?report.removed,
            changed = ?report.changed,
            started = ?report.started,
            stopped = ?report.stopped,
            needs_restart = ?report.needs_restart,
            "config reloaded"
        );
        Ok(report)
    }

    fn apply(&self, st: &mut State, new: DeployConfig) -> Result<ReloadReport, String> {
        let mut report = ReloadReport {
            needs_restart: needs_restart(&st.config, &new),
            ..Default::default()
        };
        let sharing = Sharing::of(&new, st.slices.len());
        let old_models: Vec<ModelSection> = st.models.iter().map(|m| m.section.clone()).collect();
        let section_of =
            |models: &[ModelSection], name: &str| models.iter().find(|m| m.name == name).cloned();
        // Workers that may stay: live, of a model still catalogued with the same settings,
        // under the same sharing (a worker's share is one of its settings).
        let staying = |w: &super::state::Worker| {
            w.live()
                && sharing == st.sharing
                && section_of(&new.models, w.model()).is_some_and(|n| {
                    section_of(&old_models, w.model())
                        .is_some_and(|o| !worker_settings_changed(&o, &n))
                })
        };
        let kept_keys: Vec<u64> = st
            .workers
            .iter()
            .filter(|w| staying(w))
            .map(|w| w.key())
            .collect();
        let kept: Vec<Kept> = kept_keys
            .iter()
            .filter_map(|k| st.worker(*k))
            .map(|w| Kept {
                model: w.model().to_string(),
                slice: w.slice,
                bytes: w.bytes(),
            })
            .collect();
        // The dry run: refused here, nothing has changed yet.
        let mut footprints = std::mem::take(&mut st.footprints);
        for m in &new.models {
            if section_of(&old_models, &m.name).is_none_or(|o| worker_settings_changed(&o, m)) {
                footprints.forget(&m.name);
            }
        }
        let plan = place_pinned(&new, &st.slices, sharing, &kept, &mut footprints);
        st.footprints = footprints;
        let plan = plan.map_err(|e| format!("{e}; nothing was changed"))?;

        let names = |models: &[ModelSection]| -> BTreeSet<String> {
            models.iter().map(|m| m.name.clone()).collect()
        };
        let (before, after) = (names(&old_models), names(&new.models));
        report.added = after.difference(&before).cloned().collect();
        report.removed = before.difference(&after).cloned().collect();
        for name in after.intersection(&before) {
            let (Some(o), Some(n)) = (section_of(&old_models, name), section_of(&new.models, name))
            else {
                continue;
            };
            if worker_settings_changed(&o, &n)
                || (sharing != st.sharing && st.workers_of(name).next().is_some())
            {
                report.changed.push(name.clone());
            } else {
                report.unchanged.push(name.clone());
            }
        }
        // Loaded on-demand models that change are loaded again once drained.
        let reload_loaded: Vec<String> = report
            .changed
            .iter()
            .filter(|name| {
                section_of(&new.models, name).is_some_and(|n| !n.is_pinned())
                    && st.workers_of(name).any(|w| w.live())
            })
            .cloned()
            .collect();

        // From here on the reload is applied.
        self.set_catalogue(st, &new);
        st.sharing = sharing;
        st.pending
            .retain(|p| after.contains(&p.model) && !report.changed.contains(&p.model));
        let surplus: Vec<u64> = plan.surplus.iter().map(|&i| kept_keys[i]).collect();
        for key in &kept_keys {
            let pinned = !surplus.contains(key);
            if let Some(w) = st.worker_mut(*key) {
                w.pinned = pinned;
            }
        }
        let leaving: Vec<u64> = st
            .workers
            .iter()
            .filter(|w| !kept_keys.contains(&w.key()) && !matches!(w.phase, Phase::Draining(_)))
            .map(|w| w.key())
            .collect();
        for key in leaving {
            self.stop_for_reload(st, key, &mut report);
        }
        // Replicas past a model's limit leave, unpinned ones first.
        for model in &new.models {
            let limit = model.replica_limit();
            let mut live: Vec<(bool, u64)> = st
                .workers_of(&model.name)
                .filter(|w| w.live())
                .map(|w| (w.pinned, w.key()))
                .collect();
            live.sort();
            let excess = live.len().saturating_sub(limit);
            for &(_, key) in live.iter().take(excess) {
                self.stop_for_reload(st, key, &mut report);
            }
        }
        for assignment in plan.start {
            let Some(i) = st.slices.iter().position(|s| s.id == assignment.slice.id) else {
                continue;
            };
            report
                .started
                .push(format!("{}@{}", assignment.model.name, assignment.slice.id));
            let id = st.next_pending;
            st.next_pending += 1;
            st.pending.push(PendingLoad {
                id,
                model: assignment.model.name.clone(),
                target: Some(i),
                fixed: true,
                explicit: true,
                pinned: true,
            });
        }
        for model in reload_loaded {
            let _ = self.queue_load(st, &model, None, true);
        }
        self.reconcile(st);
        Ok(report)
    }

    fn stop_for_reload(&self, st: &mut State, key: u64, report: &mut ReloadReport) {
        if let Some(w) = st.worker(key) {
            report
                .stopped
                .push(format!("{}@{}", w.model(), w.slot.id()));
        }
        self.begin_drain(st, key, DrainReason::Reload);
    }
}
