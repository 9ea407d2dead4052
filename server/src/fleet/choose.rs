//! Where a model that is not loaded goes: pure logic over the slices' tenants.
//!
//! In order: a slice with room now; a slice that will have room once drains already under
//! way end; otherwise the slice whose least recently used evictable tenants make room when
//! they leave.

use crate::config::placement::{has_room, Occupant, Sharing};
use crate::slices::Slice;

/// A worker on a slice, as the choice sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    /// The worker's key.
    pub key: u64,
    pub model: String,
    /// Bytes of the slice it holds.
    pub bytes: u64,
    /// Leaving already (drained).
    pub draining: bool,
    /// May be evicted: not pinned, serving (not loading), no request held for its model.
    pub evictable: bool,
    /// Its model's last use (any monotonic clock; smaller is older).
    pub last_use: u64,
}

/// One slice: its tenants and the room promised to loads that wait for it.
#[derive(Debug, Clone, Default)]
pub struct SliceView {
    pub tenants: Vec<Tenant>,
    /// Bytes promised to other loads waiting for this slice.
    pub promised: Vec<u64>,
}

/// What the model to place needs of each slice: its share there, or why it cannot go there
/// (too big, wrong device, a replica there already).
pub type Needs = Vec<Result<u64, String>>;

/// Where to load.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// Start it on this slice now.
    Start(usize),
    /// Start it on this slice once the drains under way there end.
    AfterDrains(usize),
    /// Drain these workers (keys) of this slice, then start it there.
    Evict { slice: usize, victims: Vec<u64> },
    /// No room now, and nothing may leave yet: ask again after the next change.
    Wait,
    /// It can never go anywhere: why.
    Never(String),
}

/// Chooses a slice among `slices` (`views` and `needs` index the same way).
pub fn choose(sharing: Sharing, slices: &[Slice], views: &[SliceView], needs: &Needs) -> Choice {
    let candidates: Vec<usize> = (0..slices.len()).filter(|&i| needs[i].is_ok()).collect();
    if candidates.is_empty() {
        let why = needs
            .iter()
            .find_map(|n| n.as_ref().err().cloned())
            .unwrap_or_else(|| "no slice".into());
        return Choice::Never(why);
    }
    let need = |i: usize| needs[i].as_ref().copied().unwrap_or(0);
    let fits = |i: usize, keep: &dyn Fn(&Tenant) -> bool| {
        let mut occupants: Vec<Occupant> = views[i]
            .tenants
            .iter()
            .filter(|t| keep(t))
            .map(|t| Occupant {
                model: t.model.clone(),
                bytes: t.bytes,
            })
            .collect();
        occupants.extend(views[i].promised.iter().map(|&bytes| Occupant {
            model: String::new(),
            bytes,
        }));
        has_room(sharing, &slices[i], &occupants, need(i))
    };
    // Fewest tenants first (a slice's compute is shared too), then the smallest slice.
    let order = |list: &mut Vec<usize>| {
        list.sort_by_key(|&i| {
            (
                views[i].tenants.len() + views[i].promised.len(),
                slices[i].memory_bytes.unwrap_or(u64::MAX),
                i,
            )
        })
    };
    let mut now: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|&i| fits(i, &|_| true))
        .collect();
    order(&mut now);
    if let Some(&i) = now.first() {
        return Choice::Start(i);
    }
    let mut soon: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|&i| fits(i, &|t| !t.draining))
        .collect();
    order(&mut soon);
    if let Some(&i) = soon.first() {
        return Choice::AfterDrains(i);
    }
    // Evict: per slice, the oldest evictable tenants until it fits; the slice whose newest
    // victim is oldest wins, then the one with fewer victims.
    let mut best: Option<((u64, usize, usize), Vec<u64>)> = None;
    for &i in &candidates {
        let mut evictable: Vec<&Tenant> = views[i]
            .tenants
            .iter()
            .filter(|t| !t.draining && t.evictable)
            .collect();
        evictable.sort_by_key(|t| (t.last_use, t.key));
        let mut victims: Vec<u64> = Vec::new();
        let mut newest = 0;
        for t in evictable {
            if fits(i, &|x: &Tenant| !x.draining && !victims.contains(&x.key)) {
                break;
            }
            victims.push(t.key);
            newest = newest.max(t.last_use);
        }
        if victims.is_empty() || !fits(i, &|x: &Tenant| !x.draining && !victims.contains(&x.key)) {
            continue;
        }
        let score = (newest, victims.len(), i);
        if best.as_ref().is_none_or(|(b, _)| score < *b) {
            best = Some((score, victims));
        }
    }
    match best {
        Some(((_, _, slice), victims)) => Choice::Evict { slice, victims },
        None => Choice::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::slices::test_slice as slice;

    fn tenant(key: u64, model: &str, gb: f64, last_use: u64) -> Tenant {
        Tenant {
            key,
            model: model.into(),
            bytes: (gb * 1e9) as u64,
            draining: false,
            evictable: true,
            last_use,
        }
    }

    const GB: u64 = 1_000_000_000;

    #[test]
    fn an_empty_slice_first_then_the_one_with_room() {
        let slices = [slice(0, 10), slice(1, 10)];
        let mut views = vec![SliceView::default(), SliceView::default()];
        views[0].tenants.push(tenant(1, "a", 1.0, 5));
        let needs: Needs = vec![Ok(GB), Ok(GB)];
        assert_eq!(
            choose(Sharing::Fit, &slices, &views, &needs),
            Choice::Start(1)
        );
        views[1].tenants.push(tenant(2, "b", 1.0, 6));
        let start = choose(Sharing::Fit, &slices, &views, &needs);
        assert_eq!(start, Choice::Start(0), "both shared: the first");
    }

    #[test]
    fn full_slices_evict_the_least_recently_used() {
        let slices = [slice(0, 10), slice(1, 10)];
        let mut views = vec![SliceView::default(), SliceView::default()];
        views[0].tenants.push(tenant(1, "a", 1.0, 50));
        views[1].tenants.push(tenant(2, "b", 1.0, 20));
        let needs: Needs = vec![Ok(GB), Ok(GB)];
        let choice = choose(Sharing::Whole, &slices, &views, &needs);
        assert_eq!(
            choice,
            Choice::Evict {
                slice: 1,
                victims: vec![2]
            }
        );
        // Once b drains, the room is the next load's without another eviction.
        views[1].tenants[0].draining = true;
        assert_eq!(
            choose(Sharing::Whole, &slices, &views, &needs),
            Choice::AfterDrains(1)
        );
        // ... unless another load was promised it.
        views[1].promised.push(GB);
        let next = choose(Sharing::Whole, &slices, &views, &needs);
        assert_eq!(
            next,
            Choice::Evict {
                slice: 0,
                victims: vec![1]
            }
        );
    }

    #[test]
    fn pinned_loading_and_waited_for_tenants_stay() {
        let slices = [slice(0, 10)];
        let mut views = vec![SliceView::default()];
        let mut pinned = tenant(1, "a", 1.0, 1);
        pinned.evictable = false;
        views[0].tenants.push(pinned);
        let needs: Needs = vec![Ok(GB)];
        assert_eq!(
            choose(Sharing::Whole, &slices, &views, &needs),
            Choice::Wait
        );
    }

    #[test]
    fn only_as_many_leave_as_room_needs() {
        let slices = [slice(0, 4)];
        let mut views = vec![SliceView::default()];
        views[0].tenants.push(tenant(1, "a", 1.5, 30));
        views[0].tenants.push(tenant(2, "b", 1.5, 10));
        views[0].tenants.push(tenant(3, "c", 0.5, 20));
        // 0.5 GB free; a 1.5 GB model needs the oldest (b) to go, not c as well.
        let needs: Needs = vec![Ok(1_500_000_000)];
        assert_eq!(
            choose(Sharing::Fit, &slices, &views, &needs),
            Choice::Evict {
                slice: 0,
                victims: vec![2]
            }
        );
        // A 2.5 GB model: b, then c (next oldest), then enough.
        let needs: Needs = vec![Ok(2_500_000_000)];
        assert_eq!(
            choose(Sharing::Fit, &slices, &views, &needs),
            Choice::Evict {
                slice: 0,
                victims: vec![2, 3]
            }
        );
    }

    #[test]
    fn equal_shares_count_workers() {
        let slices = [slice(0, 10)];
        let mut views = vec![SliceView::default()];
        views[0].tenants.push(tenant(1, "a", 5.0, 1));
        let needs: Needs = vec![Ok(5 * GB)];
        assert_eq!(
            choose(Sharing::Equal(2), &slices, &views, &needs),
            Choice::Start(0)
        );
        views[0].tenants.push(tenant(2, "b", 5.0, 2));
        assert_eq!(
            choose(Sharing::Equal(2), &slices, &views, &needs),
            Choice::Evict {
                slice: 0,
                victims: vec![1]
            }
        );
    }

    #[test]
    fn a_model_no_slice_can_hold_is_refused_with_the_reason() {
        let slices = [slice(0, 1)];
        let views = vec![SliceView::default()];
        let needs: Needs = vec![Err(
            "model \"big\" needs about 3.00 GB but slice cpu0 (1g.1gb) has 1.00 GB".into(),
        )];
        match choose(Sharing::Fit, &slices, &views, &needs) {
            Choice::Never(why) => assert!(why.contains("3.00 GB"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
