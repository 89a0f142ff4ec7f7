//! Which links are lazy: one shared tree (the paper) or one tree per origin, with each
//! per-origin tree's parent and the rounds its lazy neighbours announced (for parent
//! repair).

use std::collections::{BTreeMap, BTreeSet};

use crate::{PeerId, Tree};

/// One origin's tree at this node ([`Tree::PerOrigin`]); exists once a link is lazy in it.
#[derive(Clone, Debug)]
struct OriginTree<P> {
    /// Neighbours on lazy push for this origin.
    lazy: Vec<P>,
    /// Tree clock of the last use, for least-recently-used eviction.
    used: u64,
    /// The neighbour that delivered this origin's last message first (tree parent).
    parent: Option<P>,
    /// The round each lazy neighbour announced in its last IHave for this origin; at most
    /// one entry per neighbour.
    announced: Vec<(P, u32)>,
}

/// The lazy links of this node. Every collection is ordered: parent repair walks the
/// per-origin trees and its Grafts go out in that order (same inputs, same outputs).
#[derive(Clone, Debug)]
pub(crate) struct Trees<P> {
    kind: Tree,
    /// Most per-origin trees ([`crate::Config::max_trees`]); beyond it the least recently
    /// used is forgotten (its links turn eager again).
    max: usize,
    /// The shared tree's lazy links ([`Tree::Shared`]).
    shared_lazy: BTreeSet<P>,
    /// Per-origin trees ([`Tree::PerOrigin`]).
    per_origin: BTreeMap<P, OriginTree<P>>,
    clock: u64,
}

impl<P: PeerId> Trees<P> {
    pub(crate) fn new(kind: Tree, max: usize) -> Self {
        Self { kind, max, shared_lazy: BTreeSet::new(), per_origin: BTreeMap::new(), clock: 0 }
    }

    /// Switch the tree kind; every link is eager again.
    pub(crate) fn set_kind(&mut self, kind: Tree) {
        self.kind = kind;
        self.shared_lazy.clear();
        self.per_origin.clear();
    }

    /// Per-origin trees held.
    pub(crate) fn len(&self) -> usize {
        self.per_origin.len()
    }

    /// Whether `p` is off the tree of `origin`.
    pub(crate) fn is_lazy(&self, origin: &P, p: &P) -> bool {
        match self.kind {
            Tree::Shared => self.shared_lazy.contains(p),
            Tree::PerOrigin => self.per_origin.get(origin).is_some_and(|t| t.lazy.contains(p)),
        }
    }

    /// Move `p` off the tree of `origin`. Returns true when a least recently used tree
    /// was forgotten to make room (the caller counts it).
    pub(crate) fn set_lazy(&mut self, origin: &P, p: &P) -> bool {
        match self.kind {
            Tree::Shared => {
                self.shared_lazy.insert(p.clone());
                false
            }
            Tree::PerOrigin => {
                self.clock += 1;
                let clock = self.clock;
                let mut evicted = false;
                if !self.per_origin.contains_key(origin)
                    && self.per_origin.len() >= self.max
                    && let Some(old) = self.per_origin.iter().min_by_key(|(_, t)| t.used).map(|(k, _)| k.clone())
                {
                    self.per_origin.remove(&old);
                    evicted = true;
                }
                let t = self.per_origin.entry(origin.clone()).or_insert_with(|| OriginTree {
                    lazy: Vec::new(),
                    used: clock,
                    parent: None,
                    announced: Vec::new(),
                });
                t.used = clock;
                if !t.lazy.contains(p) {
                    t.lazy.push(p.clone());
                }
                evicted
            }
        }
    }

    /// Put `p` on the tree of `origin`.
    pub(crate) fn set_eager(&mut self, origin: &P, p: &P) {
        match self.kind {
            Tree::Shared => {
                self.shared_lazy.remove(p);
            }
            Tree::PerOrigin => {
                if let Some(t) = self.per_origin.get_mut(origin) {
                    t.lazy.retain(|q| q != p);
                }
            }
        }
    }

    /// A message of `origin` is being pushed: its tree was used now.
    pub(crate) fn touch(&mut self, origin: &P) {
        if let (Tree::PerOrigin, Some(t)) = (self.kind, self.per_origin.get_mut(origin)) {
            self.clock += 1;
            t.used = self.clock;
        }
    }

    /// `p` delivered `origin`'s latest message first: it is that tree's parent.
    pub(crate) fn set_parent(&mut self, origin: &P, p: &P) {
        if let Some(t) = self.per_origin.get_mut(origin) {
            t.parent = Some(p.clone());
        }
    }

    /// The lazy neighbour of `origin`'s tree that announced it at the lowest round (the
    /// first of them on a tie), other than `not`: the tree parent to take when no link of
    /// this tree is eager any more.
    pub(crate) fn best_announcer(&self, origin: &P, not: &P) -> Option<P> {
        let t = self.per_origin.get(origin)?;
        t.announced
            .iter()
            .filter(|(q, _)| q != not && t.lazy.contains(q))
            .min_by_key(|(_, r)| *r)
            .map(|(q, _)| q.clone())
    }

    /// `from` announced a message of `origin` at `round` (kept, one entry per neighbour,
    /// for parent repair).
    pub(crate) fn announced(&mut self, origin: &P, from: &P, round: u32) {
        if let Some(t) = self.per_origin.get_mut(origin) {
            match t.announced.iter_mut().find(|(q, _)| q == from) {
                Some(e) => e.1 = round,
                None => t.announced.push((from.clone(), round)),
            }
        }
    }

    /// A new neighbour starts eager in every tree.
    pub(crate) fn neighbor_up(&mut self, p: &P) {
        self.shared_lazy.remove(p);
        for t in self.per_origin.values_mut() {
            t.lazy.retain(|q| q != p);
        }
    }

    /// `p` is no longer a neighbour: forget it everywhere. For every per-origin tree whose
    /// parent it was, the lazy neighbour that announced that origin at the lowest round
    /// (the first of them on a tie) becomes the parent and is put on the tree; returns
    /// those `(origin, new parent)` pairs in origin order, for the caller to Graft.
    pub(crate) fn neighbor_down(&mut self, p: &P) -> Vec<(P, P)> {
        self.shared_lazy.remove(p);
        let mut repairs = Vec::new();
        for (origin, t) in &mut self.per_origin {
            t.lazy.retain(|q| q != p);
            t.announced.retain(|(q, _)| q != p);
            if t.parent.take_if(|q| q == p).is_some() {
                // The shallowest announcer. One deeper than we were may sit in our own
                // subtree; grafting it closes a cycle that no message enters, which costs
                // what the paper's repair costs anyway (the next message's IHaves and
                // timer 1 graft a real parent) plus one duplicate, so it is not excluded:
                // excluding rounds deeper than ours measured worse (churn, one sender:
                // RMR 0.074 against 0.067).
                let best = t.announced.iter().filter(|(q, _)| t.lazy.contains(q)).min_by_key(|(_, r)| *r);
                if let Some((q, _)) = best {
                    let q = q.clone();
                    t.lazy.retain(|x| x != &q);
                    t.parent = Some(q.clone());
                    repairs.push((origin.clone(), q));
                }
            }
        }
        repairs
    }

    /// Every lazy link of every tree (each tree's in turn).
    #[cfg(test)]
    pub(crate) fn all_lazy(&self) -> impl Iterator<Item = &P> {
        self.shared_lazy.iter().chain(self.per_origin.values().flat_map(|t| t.lazy.iter()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_tree_is_forgotten_beyond_the_bound() {
        let mut t = Trees::new(Tree::PerOrigin, 2);
        assert!(!t.set_lazy(&10u32, &1));
        assert!(!t.set_lazy(&20, &1));
        t.touch(&10);
        assert!(t.set_lazy(&30, &1), "a third tree evicts one");
        assert!(t.is_lazy(&10, &1), "10 was used last");
        assert!(!t.is_lazy(&20, &1), "20 was forgotten: eager again");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_failed_parent_is_replaced_by_the_shallowest_lazy_announcer() {
        let mut t = Trees::new(Tree::PerOrigin, 16);
        for origin in [7u32, 8] {
            t.set_lazy(&origin, &2);
            t.set_lazy(&origin, &3);
            t.set_parent(&origin, &1);
        }
        t.announced(&7, &2, 4);
        t.announced(&7, &3, 2);
        t.announced(&8, &2, 1);
        t.announced(&8, &3, 1);
        // A tree whose parent is someone else is left alone.
        t.set_lazy(&9, &2);
        t.set_parent(&9, &3);
        t.announced(&9, &2, 0);
        let repairs = t.neighbor_down(&1);
        assert_eq!(repairs, vec![(7, 3), (8, 2)], "lowest round; the first announcer on a tie");
        assert!(!t.is_lazy(&7, &3) && !t.is_lazy(&8, &2), "the new parents are eager");
        assert!(t.is_lazy(&9, &2));
        assert!(t.neighbor_down(&1).is_empty(), "nothing left to repair");
    }

    #[test]
    fn the_shared_tree_ignores_the_origin() {
        let mut t = Trees::new(Tree::Shared, 16);
        t.set_lazy(&7u32, &2);
        assert!(t.is_lazy(&8, &2));
        t.neighbor_up(&2);
        assert!(!t.is_lazy(&7, &2));
        assert!(t.neighbor_down(&2).is_empty());
    }
}
