//! The model of what the store acknowledged, and the checks against it.
//!
//! Per key the model keeps the writes since the state was last *observed* (at a recovery the observed
//! state becomes the new base, so a write lost in a crash can never be accepted again later: that is how
//! a resurrected stale segment shows). Each write records what the caller was told: value (None: a
//! delete), version, timestamp, generation, and whether it was acknowledged durable. A write whose call
//! returned an error is *uncertain*: it may or may not have happened.

use std::collections::{BTreeMap, HashMap};

use nvkv::Meta;

/// A check that failed: a named class (for grouping and the known-open list) and what was seen.
#[derive(Debug, Clone)]
pub struct Failure {
    pub class: String,
    pub detail: String,
}

pub type Check = Result<(), Failure>;

/// Builds a [`Failure`].
macro_rules! fail {
    ($class:expr, $($arg:tt)*) => {
        Err($crate::model::Failure { class: ($class).to_string(), detail: format!($($arg)*) })
    };
}
pub(crate) use fail;

/// One write as the caller saw it.
#[derive(Debug, Clone)]
pub struct Wr {
    /// Simulator write id (also inside non-integer values).
    pub id: u64,
    pub value: Option<Vec<u8>>,
    /// None: unknown (an uncertain write).
    pub version: Option<u64>,
    pub ts: Option<u64>,
    pub gen: u64,
    pub life: u32,
    /// Acknowledged durable (wait_durable / sync / close returned Ok after it).
    pub durable: bool,
    /// False: the call failed, the write may or may not be there.
    pub certain: bool,
    /// The state observed at a recovery (the base of the history).
    pub base: bool,
}

/// What a read may return for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cand {
    pub value: Option<Vec<u8>>,
    pub version: Option<u64>,
    pub ts: Option<u64>,
}

/// How a life of the store ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifeEnd {
    /// Power loss.
    Crash,
    /// Process restart: everything submitted reached the medium.
    Restart,
    /// `close` returned Ok.
    Clean,
}

/// Who was given a version.
#[derive(Debug, Clone, Copy)]
pub struct VersionHolder {
    pub write: u64,
    pub life: u32,
    pub key_durable: bool,
}

#[derive(Debug, Default)]
pub struct Model {
    pub keys: BTreeMap<Vec<u8>, Vec<Wr>>,
    /// Every version ever returned by an applied write, and by which write.
    pub versions: HashMap<u64, VersionHolder>,
    /// Every non-integer value ever written, by bytes: (key, write id).
    pub values: HashMap<Vec<u8>, (Vec<u8>, u64)>,
    pub life: u32,
    pub ends: Vec<LifeEnd>,
    pub next_id: u64,
    /// Highest version returned in this life (versions must increase).
    pub last_version: u64,
    /// Operations checked (for the summary).
    pub checked: u64,
    /// Classes reported but not failed (`NVKV_SIM_KNOWN`): a seed that hits one of those that leave
    /// the model intact goes on, so one common failure does not hide the others.
    pub known: Vec<String>,
    /// Failures of known classes seen on the way.
    pub soft: Vec<Failure>,
}

fn show(v: &Option<Vec<u8>>) -> String {
    match v {
        None => "absent".into(),
        Some(b) if b.len() == 8 => format!(
            "int {}",
            i64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]))
        ),
        Some(b) => {
            let end = b.iter().position(|&c| c == b':').unwrap_or(b.len().min(16));
            format!("{:?}(len {})", String::from_utf8_lossy(&b[..end]), b.len())
        }
    }
}

impl Model {
    pub fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Records a write the store reported applied (certain) or a call that failed (uncertain).
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &mut self,
        key: &[u8],
        id: u64,
        value: Option<Vec<u8>>,
        version: Option<u64>,
        ts: Option<u64>,
        gen: u64,
        certain: bool,
    ) -> Check {
        if let Some(v) = &value {
            if v.len() != 8 {
                self.values.insert(v.clone(), (key.to_vec(), id));
            }
        }
        let life = self.life;
        self.keys.entry(key.to_vec()).or_default().push(Wr {
            id,
            value,
            version,
            ts,
            gen,
            life,
            durable: false,
            certain,
            base: false,
        });
        self.check_version(key, id, version)
    }

    /// A new version must exceed the ones of this life and never have been returned before.
    fn check_version(&mut self, key: &[u8], id: u64, version: Option<u64>) -> Check {
        if let Some(ver) = version {
            if ver <= self.last_version {
                return self.report_soft(
                    key,
                    id,
                    fail!(
                        "version-not-increasing",
                        "write {id} of {:?} got version {ver}, after {} in the same life",
                        String::from_utf8_lossy(key),
                        self.last_version
                    ),
                );
            }
            self.last_version = ver;
            if let Some(h) = self.versions.get(&ver).copied() {
                let holder_durable = self.was_durable(h.write);
                let class = if h.life == self.life {
                    "version-reused-same-life"
                } else if holder_durable || h.key_durable {
                    "version-reused"
                } else {
                    "version-reused-of-lost-write"
                };
                let holder = VersionHolder {
                    write: id,
                    life: self.life,
                    key_durable: false,
                };
                self.versions.insert(ver, holder);
                return self.report_soft(
                    key,
                    id,
                    fail!(
                    class,
                    "write {id} of {:?} got version {ver}, already returned to write {} in life {} \
                     (now life {}, lives ended by {:?})",
                    String::from_utf8_lossy(key),
                    h.write,
                    h.life,
                    self.life,
                    self.ends
                ),
                );
            }
            self.versions.insert(
                ver,
                VersionHolder {
                    write: id,
                    life: self.life,
                    key_durable: false,
                },
            );
        }
        Ok(())
    }

    /// Reports `r` softly when its class is known-open and the model stays sound after it.
    pub fn report_soft(&mut self, _key: &[u8], _id: u64, r: Check) -> Check {
        match r {
            Err(f) if crate::is_known(&self.known, &f.class) => {
                self.soft.push(f);
                Ok(())
            }
            r => r,
        }
    }

    fn was_durable(&self, write: u64) -> bool {
        // Versions of writes that were durable are marked when they become so.
        self.keys
            .values()
            .flatten()
            .any(|w| w.id == write && w.durable)
    }

    /// Every certain write of this life with `gen <= durable_gen` is now acknowledged durable.
    pub fn mark_durable(&mut self, durable_gen: u64) {
        let life = self.life;
        for ws in self.keys.values_mut() {
            for w in ws.iter_mut() {
                if w.certain && w.life == life && w.gen <= durable_gen && !w.durable && !w.base {
                    w.durable = true;
                    if let Some(v) = w.version {
                        if let Some(h) = self.versions.get_mut(&v) {
                            h.key_durable = true;
                        }
                    }
                }
            }
        }
    }

    /// The certain write `id` of this life is acknowledged durable (by its own durable-log record:
    /// nothing before it becomes durable with it).
    pub fn mark_write_durable(&mut self, id: u64) {
        let life = self.life;
        for ws in self.keys.values_mut() {
            for w in ws.iter_mut() {
                if w.id == id && w.certain && w.life == life && !w.base {
                    w.durable = true;
                    if let Some(v) = w.version {
                        if let Some(h) = self.versions.get_mut(&v) {
                            h.key_durable = true;
                        }
                    }
                }
            }
        }
    }

    /// What a read in this life may return: the last certain write (or the base / absence before any),
    /// and every uncertain write after it.
    pub fn live(&self, key: &[u8]) -> Vec<Cand> {
        let ws = self.keys.get(key).map(Vec::as_slice).unwrap_or(&[]);
        let last_certain = ws.iter().rposition(|w| w.certain);
        let mut out = Vec::new();
        match last_certain {
            Some(i) => out.push(cand(&ws[i])),
            None => out.push(Cand {
                value: None,
                version: None,
                ts: None,
            }),
        }
        for w in &ws[last_certain.map_or(0, |i| i + 1)..] {
            out.push(cand(w));
        }
        out
    }

    /// The exact state of a key when no uncertain write follows its last certain one.
    pub fn exact(&self, key: &[u8]) -> Option<Cand> {
        let l = self.live(key);
        (l.len() == 1).then(|| l[0].clone())
    }

    /// Checks a read in this life against [`Model::live`].
    pub fn check_live_read(
        &mut self,
        key: &[u8],
        got: &Option<(Vec<u8>, Meta)>,
        what: &str,
    ) -> Check {
        self.checked += 1;
        let cands = self.live(key);
        if cands.iter().any(|c| read_matches(c, got)) {
            return Ok(());
        }
        fail!(
            "read-wrong-in-life",
            "{what}: key {:?} read {} (version {:?}); allowed {}",
            String::from_utf8_lossy(key),
            show(&got.as_ref().map(|g| g.0.clone())),
            got.as_ref().map(|g| g.1.version),
            cands
                .iter()
                .map(|c| format!("{} v{:?}", show(&c.value), c.version))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// Checks the state of `key` read after a recovery; on success makes it the key's new base.
    pub fn check_recovered(&mut self, key: &[u8], got: &Option<(Vec<u8>, Meta)>) -> Check {
        self.checked += 1;
        let ws = self.keys.get(key).cloned().unwrap_or_default();
        let last_durable = ws.iter().rposition(|w| w.durable || w.base);
        let allowed: Vec<&Wr> = match last_durable {
            Some(d) => ws[d..].iter().collect(),
            None => ws.iter().collect(),
        };
        let absent_ok = last_durable.is_none() || allowed.iter().any(|w| w.value.is_none());
        let ok = match got {
            None => absent_ok,
            Some(_) => allowed.iter().any(|w| read_matches(&cand(w), got)),
        };
        let k = String::from_utf8_lossy(key).to_string();
        if !ok {
            let got_v = got.as_ref().map(|g| g.0.clone());
            let desc = last_durable.map(|d| {
                let w = &ws[d];
                format!(
                    "write {} ({}, v{:?}, life {}{})",
                    w.id,
                    show(&w.value),
                    w.version,
                    w.life,
                    if w.base { ", recovered base" } else { "" }
                )
            });
            // Which kind of wrong: a value of this key's history before the durable one (stale), one
            // lost in an earlier crash coming back (resurrected), a right value with another version,
            // an acknowledged write missing, or bytes never written for this key.
            let class = match &got_v {
                None => {
                    if last_durable.is_some_and(|d| ws[d].base) {
                        "recovered-value-lost"
                    } else {
                        "durable-write-lost"
                    }
                }
                Some(v) => {
                    if allowed.iter().any(|w| w.value.as_ref() == Some(v)) {
                        "version-wrong-after-recovery"
                    } else if ws.iter().any(|w| w.value.as_ref() == Some(v)) {
                        "stale-value-after-recovery"
                    } else if self.values.get(v).is_some_and(|(kk, _)| kk == key) {
                        "lost-write-resurrected"
                    } else if v.len() == 8 && key.starts_with(b"n") {
                        // Integers are not unique: an older counter value.
                        "stale-value-after-recovery"
                    } else {
                        "never-written-value"
                    }
                }
            };
            return fail!(
                class,
                "key {k:?} recovered as {} (version {:?}); last durable/base: {}; allowed since: {}",
                show(&got_v),
                got.as_ref().map(|g| g.1.version),
                desc.unwrap_or_else(|| "none".into()),
                allowed
                    .iter()
                    .map(|w| format!("#{} {} v{:?}{}", w.id, show(&w.value), w.version, if w.durable { " durable" } else { "" }))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let life = self.life;
        let base = got.as_ref().map(|(v, m)| Wr {
            id: 0,
            value: Some(v.clone()),
            version: Some(m.version),
            ts: Some(m.ts),
            gen: 0,
            life,
            durable: true,
            certain: true,
            base: true,
        });
        self.keys.insert(key.to_vec(), base.into_iter().collect());
        Ok(())
    }

    /// Starts the next life after `end`.
    pub fn next_life(&mut self, end: LifeEnd) {
        self.ends.push(end);
        self.life += 1;
        self.last_version = 0;
    }

    /// Keys with an exact present value whose write is durable (reads of them must work).
    pub fn durable_present(&self) -> Vec<(Vec<u8>, Cand)> {
        self.keys
            .iter()
            .filter_map(|(k, ws)| {
                let w = ws.last()?;
                (w.certain && (w.durable || w.base) && w.value.is_some())
                    .then(|| (k.clone(), cand(w)))
            })
            .collect()
    }
}

fn cand(w: &Wr) -> Cand {
    Cand {
        value: w.value.clone(),
        version: w.version,
        ts: w.ts,
    }
}

fn read_matches(c: &Cand, got: &Option<(Vec<u8>, Meta)>) -> bool {
    match (got, &c.value) {
        (None, None) => true,
        (Some((v, m)), Some(cv)) => v == cv && c.version.is_none_or(|x| x == m.version),
        _ => false,
    }
}
