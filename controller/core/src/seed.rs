//! One pull per zone first (`spec.seed.per_zone`; design: docs/src/design.md#the-reconciler):
//! for each image, at most `per_zone` nodes of a zone pull it until one of the zone's nodes
//! holds it; then the zone's other nodes start, and a node-local mirror (Spegel, Dragonfly)
//! can serve them from inside the zone instead of the registry.
//!
//! A zone is a node's `topology.kubernetes.io/zone` label; nodes without it form one zone. A
//! seed that fails frees its place: the next node of the zone seeds. Warming nodes come first
//! in the round's creation order, so they seed first.

use std::collections::{BTreeMap, BTreeSet};

use crate::outcome::Outcome;
use crate::plan::NodePlan;

/// (node, image) -> what happened, as the round records it.
type Outcomes = BTreeMap<(String, String), Outcome>;

/// Which (zone, image) pulls may start now, kept up to date as a reconcile plans its pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneSeeds {
    /// `None`: seeding is off, every pull may start.
    per_zone: Option<usize>,
    /// (zone, image) some node of the zone holds: present, or pulled this round.
    seeded: BTreeSet<(String, String)>,
    /// (zone, image) -> nodes of the zone pulling it now (pods in flight and pods planned).
    pulling: BTreeMap<(String, String), usize>,
}

impl ZoneSeeds {
    /// The state of a round: `targets` (with their zones), its `outcomes`, and `in_flight`,
    /// the (node, image) pairs its pods in flight are still pulling.
    pub fn new(
        per_zone: Option<usize>,
        targets: &[NodePlan],
        outcomes: &Outcomes,
        in_flight: &[(String, String)],
    ) -> Self {
        let Some(per_zone) = per_zone else {
            return Self::default();
        };
        let zones: BTreeMap<&str, &str> = targets
            .iter()
            .map(|t| (t.node.as_str(), t.zone.as_str()))
            .collect();
        let mut seeds = Self {
            per_zone: Some(per_zone),
            ..Self::default()
        };
        for target in targets {
            for image in &target.present {
                seeds.seeded.insert((target.zone.clone(), image.clone()));
            }
        }
        for ((node, image), outcome) in outcomes {
            if let (Outcome::Pulled { .. }, Some(zone)) = (outcome, zones.get(node.as_str())) {
                seeds.seeded.insert((zone.to_string(), image.clone()));
            }
        }
        for (node, image) in in_flight {
            if let Some(zone) = zones.get(node.as_str()) {
                *seeds
                    .pulling
                    .entry((zone.to_string(), image.clone()))
                    .or_default() += 1;
            }
        }
        seeds
    }

    /// Whether `target` may pull `image` now, counting it as pulling if so; otherwise it waits
    /// for a seed of its zone.
    pub fn take(&mut self, target: &NodePlan, image: &str) -> bool {
        let Some(per_zone) = self.per_zone else {
            return true;
        };
        let key = (target.zone.clone(), image.to_string());
        if self.seeded.contains(&key) {
            return true;
        }
        let pulling = self.pulling.entry(key).or_default();
        let free = *pulling < per_zone;
        if free {
            *pulling += 1;
        }
        free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(node: &str, zone: &str, pull: &[&str], present: &[&str]) -> NodePlan {
        NodePlan {
            node: node.into(),
            zone: zone.into(),
            pull: pull.iter().map(|s| s.to_string()).collect(),
            present: present.iter().map(|s| s.to_string()).collect(),
            ..NodePlan::default()
        }
    }

    fn pulled() -> Outcome {
        Outcome::Pulled { image_id: None }
    }

    fn images(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// The images of `wanted` that `target` may take now.
    fn take_all(seeds: &mut ZoneSeeds, target: &NodePlan, wanted: Vec<String>) -> Vec<String> {
        wanted
            .into_iter()
            .filter(|image| seeds.take(target, image))
            .collect()
    }

    /// What each target may take, in order, from a fresh state.
    fn takes(seeds: &mut ZoneSeeds, targets: &[NodePlan]) -> Vec<Vec<String>> {
        targets
            .iter()
            .map(|t| take_all(seeds, t, t.pull.clone()))
            .collect()
    }

    #[test]
    fn off_every_node_pulls_at_once() {
        let targets = [
            target("a1", "a", &["x:1"], &[]),
            target("a2", "a", &["x:1"], &[]),
        ];
        let mut seeds = ZoneSeeds::new(None, &targets, &Outcomes::new(), &[]);
        assert_eq!(
            takes(&mut seeds, &targets),
            [images(&["x:1"]), images(&["x:1"])]
        );
    }

    #[test]
    fn per_zone_nodes_of_each_zone_pull_first() {
        let targets = [
            target("a1", "a", &["x:1", "y:1"], &[]),
            target("a2", "a", &["x:1", "y:1"], &[]),
            target("a3", "a", &["x:1", "y:1"], &[]),
            target("b1", "b", &["x:1"], &[]),
            target("b2", "b", &["x:1"], &[]),
            target("n1", "", &["x:1"], &[]),
            target("n2", "", &["x:1"], &[]),
        ];
        let mut one = ZoneSeeds::new(Some(1), &targets, &Outcomes::new(), &[]);
        assert_eq!(
            takes(&mut one, &targets),
            [
                images(&["x:1", "y:1"]),
                vec![],
                vec![],
                images(&["x:1"]),
                vec![],
                images(&["x:1"]),
                vec![],
            ],
            "one node per zone, and nodes without a zone form one zone"
        );
        let mut two = ZoneSeeds::new(Some(2), &targets, &Outcomes::new(), &[]);
        let taken = takes(&mut two, &targets);
        assert_eq!(taken.iter().filter(|t| !t.is_empty()).count(), 6);
        assert!(taken[2].is_empty(), "a3 waits: a1 and a2 seed zone a");
    }

    #[test]
    fn a_zone_holding_the_image_pulls_everywhere() {
        let targets = [
            target("a1", "a", &[], &["x:1"]),
            target("a2", "a", &["x:1"], &[]),
            target("a3", "a", &["x:1"], &[]),
            target("b1", "b", &["x:1"], &[]),
            target("b2", "b", &["x:1"], &[]),
        ];
        let outcomes = Outcomes::from([(("b1".into(), "x:1".into()), pulled())]);
        let mut seeds = ZoneSeeds::new(Some(1), &targets, &outcomes, &[]);
        let taken: Vec<Vec<String>> = targets[1..]
            .iter()
            .map(|t| take_all(&mut seeds, t, t.pull.clone()))
            .collect();
        assert_eq!(
            taken,
            vec![images(&["x:1"]); 4],
            "a1 lists it; b1 pulled it"
        );
    }

    #[test]
    fn seeds_in_flight_hold_their_places_and_a_failed_seed_frees_one() {
        let targets = [
            target("a1", "a", &["x:1"], &[]),
            target("a2", "a", &["x:1"], &[]),
            target("a3", "a", &["x:1"], &[]),
        ];
        let in_flight = [("a1".to_string(), "x:1".to_string())];
        let mut seeds = ZoneSeeds::new(Some(1), &targets, &Outcomes::new(), &in_flight);
        assert_eq!(
            take_all(&mut seeds, &targets[1], images(&["x:1"])),
            Vec::<String>::new()
        );

        // a1's pull failed: its pod is done, and the next node seeds.
        let failed = Outcome::Failed {
            reason: "ErrImagePull".into(),
            message: "registry down".into(),
        };
        let outcomes = Outcomes::from([(("a1".into(), "x:1".into()), failed)]);
        let mut seeds = ZoneSeeds::new(Some(1), &targets, &outcomes, &[]);
        assert_eq!(
            take_all(&mut seeds, &targets[1], images(&["x:1"])),
            images(&["x:1"])
        );
        assert_eq!(
            take_all(&mut seeds, &targets[2], images(&["x:1"])),
            Vec::<String>::new()
        );
    }
}
