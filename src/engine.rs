//! The engine: pure functions from (customer state, event or timer, clock, thresholds)
//! to (new state, output events, timer and dedupe changes). No IO, no wall clock: the
//! shells ([`crate::processor`] over a store, and through it replay, demo and Kafka)
//! own storage and time, so every shell computes exactly the same thing.

use xxhash_rust::xxh3::xxh3_64;

use crate::config::Settings;
use crate::customer::{CustomerState, Episode, Figures, Indexed};
use crate::day::{day_start_millis, Day};
use crate::event::{Event, EventKind};
use crate::output::{
    money, Body, Cause, ComplaintsTrigger, Output, OutputType, OverdueTrigger, PAliveTrigger, Rfm,
    SpendDropTrigger, Triggers,
};
use crate::policy::{self, Rule, RuleSet, Thresholds, Tiers};
use crate::population::Population;

/// Hash of an `event_id` for duplicate detection (64 bits per customer: a false
/// duplicate needs two ids of one customer to collide, about 1 in 10^19 per pair).
pub fn event_hash(event_id: &str) -> u64 {
    xxh3_64(event_id.as_bytes())
}

/// Side effects of one engine step, for the shell to persist or publish.
#[derive(Debug, Default)]
pub struct Effects {
    pub outputs: Vec<Output>,
    /// Event-id hashes of this customer to move to the dedupe archive.
    pub archive: Vec<u64>,
    /// `(old, new)` when the customer's timer moved.
    pub timer_moved: Option<(Option<Day>, Option<Day>)>,
    /// `(old, new)` when the customer's index entries moved.
    pub index_moved: Option<(Option<Indexed>, Option<Indexed>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Applied,
    Duplicate,
}

pub struct Engine<'a> {
    pub settings: &'a Settings,
}

impl<'a> Engine<'a> {
    pub fn new(settings: &'a Settings) -> Self {
        Engine { settings }
    }

    /// First day still kept in buckets when the stream clock is at `clock`.
    pub fn horizon(&self, clock: Day) -> Day {
        clock - self.settings.retention_days + 1
    }

    /// Apply one event at stream clock `clock` (≥ the event's day), then re-evaluate the
    /// customer at `clock`. `archived_duplicate` is the shell's answer for events older
    /// than the horizon whose id may sit in the dedupe archive.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_event(
        &self,
        state: &mut CustomerState,
        is_new: bool,
        ev: &Event,
        archived_duplicate: bool,
        clock: Day,
        thresholds: &Thresholds,
        pop: &mut Population,
        fx: &mut Effects,
    ) -> Applied {
        let hash = event_hash(&ev.event_id);
        if state.has_seen(hash) || archived_duplicate {
            return Applied::Duplicate;
        }
        if is_new {
            pop.on_new_customer();
        }
        let horizon = self.horizon(clock);
        fx.archive.extend(state.prune(horizon));
        let (effect, archive) = state.apply(ev, hash, horizon);
        if archive {
            fx.archive.push(hash);
        }
        if let (Some(e), EventKind::Purchase { amount_micros }) = (effect, ev.kind) {
            pop.on_purchase(&e, ev.day, amount_micros, self.settings.window_days);
        }
        let cause = Cause::Event {
            event_id: &ev.event_id,
            ts_millis: ev.ts_millis,
        };
        let purchase = matches!(ev.kind, EventKind::Purchase { .. });
        self.evaluate(
            state,
            &ev.customer_id,
            clock,
            cause,
            purchase,
            thresholds,
            fx,
        );
        Applied::Applied
    }

    /// Re-evaluate a customer at `as_of`: publish tier changes and churn episode
    /// transitions, and move the customer's timer to its next change day.
    #[allow(clippy::too_many_arguments)]
    pub fn evaluate(
        &self,
        state: &mut CustomerState,
        customer_id: &str,
        as_of: Day,
        cause: Cause,
        purchase: bool,
        thresholds: &Thresholds,
        fx: &mut Effects,
    ) {
        let s = self.settings;
        let f = state.figures(as_of, s);
        let tiers = policy::tiers(&f, thresholds, s);
        let ts = match cause {
            Cause::Event { ts_millis, .. } => ts_millis,
            _ => day_start_millis(as_of, s.tz),
        };
        let out = |kind, body| Output::new(customer_id, cause, ts, as_of, kind, body);

        if state.published != Some(tiers) {
            fx.outputs.push(out(
                OutputType::TierChanged,
                Body::TierChanged {
                    changed: changed_dimensions(state.published.as_ref(), &tiers),
                    from: state.published,
                    to: tiers,
                    rfm: Rfm::from(&f),
                },
            ));
            state.published = Some(tiers);
        }

        if purchase {
            if let Some(ep) = state.episode.take() {
                fx.outputs.push(out(
                    OutputType::ChurnRecovered,
                    Body::ChurnRecovered {
                        reasons: ep.reasons.names(),
                        rfm: Rfm::from(&f),
                    },
                ));
            }
        }
        let rules = policy::churn_rules(&f, tiers.value_tier, thresholds, s);
        if !rules.is_empty() {
            let severity = policy::severity(&tiers);
            let warn = match state.episode {
                None => true,
                Some(ep) => !rules.is_subset(ep.reasons) || severity > ep.severity,
            };
            if warn {
                let mut o = out(
                    OutputType::ChurnWarning,
                    Body::ChurnWarning {
                        reasons: rules.names(),
                        severity,
                        rfm: Rfm::from(&f),
                        triggers: self.triggers(&f, rules, &tiers, thresholds),
                    },
                );
                o.opens_episode = state.episode.is_none();
                fx.outputs.push(o);
                state.episode = Some(match state.episode {
                    None => Episode {
                        reasons: rules,
                        severity,
                    },
                    Some(ep) => Episode {
                        reasons: ep.reasons.union(rules),
                        severity: ep.severity.max(severity),
                    },
                });
            }
        }

        // (The day P(alive) crosses the `p_alive` threshold is not in the timer:
        // it is a function of the model group alone, kept by the processor's
        // watch, `crate::predict::watch`.)
        let next = state.next_change(&f, s);
        if next != state.timer {
            fx.timer_moved = Some((state.timer, next));
            state.timer = next;
        }
        let indexed = f.recency_days.map(|r| Indexed {
            last_day: as_of - r,
            frequency: f.frequency,
            micros: f.monetary_micros,
        });
        if indexed != state.indexed {
            fx.index_moved = Some((state.indexed, indexed));
            state.indexed = indexed;
        }
    }

    fn triggers(&self, f: &Figures, rules: RuleSet, tiers: &Tiers, th: &Thresholds) -> Triggers {
        let c = &self.settings.raw.churn;
        let mut t = Triggers::default();
        if let (true, Some(p), Some(i)) = (
            rules.contains(Rule::PAlive),
            policy::p_alive(f, th),
            f.model_inputs,
        ) {
            t.p_alive = Some(PAliveTrigger {
                p_alive: p,
                threshold: c.p_alive_below,
                x: i.x,
                t_x: i.t_x,
                t: f.as_of - i.first,
            });
        }
        if rules.contains(Rule::Overdue) {
            t.overdue = Some(OverdueTrigger {
                recency_days: f.recency_days.unwrap_or(0),
                threshold_days: policy::overdue_threshold(f, self.settings).unwrap_or(0.0),
                mean_interpurchase_days: f.mean_interpurchase_days,
            });
        }
        if rules.contains(Rule::Complaints) {
            t.complaints = Some(ComplaintsTrigger {
                recent_complaints: f.recent_complaints,
                recent_high_severity: f.recent_high_complaints,
                threshold: c.complaint_threshold,
                value_tier: tiers.value_tier,
            });
        }
        if rules.contains(Rule::SpendDrop) {
            t.spend_drop = Some(SpendDropTrigger {
                recent_monetary: money(f.drop_recent_micros),
                previous_monetary: money(f.drop_previous_micros),
                drop_ratio: c.drop_ratio,
            });
        }
        t
    }
}

fn changed_dimensions(from: Option<&Tiers>, to: &Tiers) -> Vec<&'static str> {
    let mut v = Vec::with_capacity(3);
    if from.map(|f| f.rfm_segment) != Some(to.rfm_segment) {
        v.push("rfm_segment");
    }
    if from.map(|f| f.value_tier) != Some(to.value_tier) {
        v.push("value_tier");
    }
    if from.map(|f| f.lifecycle) != Some(to.lifecycle) {
        v.push("lifecycle");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ComplaintSeverity;

    /// One customer fed through the engine at a fixed clock, with empty thresholds.
    struct Harness {
        settings: Settings,
        state: CustomerState,
        pop: Population,
        fresh: bool,
        clock: Day,
    }

    impl Harness {
        fn new(clock: Day) -> Harness {
            let settings = Settings::defaults();
            let mut pop = Population::default();
            pop.advance(clock, settings.window_days, 0);
            Harness {
                settings,
                state: CustomerState::default(),
                pop,
                fresh: true,
                clock,
            }
        }

        fn apply(&mut self, id: &str, kind: EventKind) -> (Applied, Vec<Output>) {
            let ev = Event {
                event_id: id.into(),
                customer_id: "c".into(),
                kind,
                ts_millis: self.clock as i64 * 86_400_000,
                day: self.clock,
            };
            let mut fx = Effects::default();
            let engine = Engine::new(&self.settings);
            let t = Thresholds::default();
            let applied = engine.apply_event(
                &mut self.state,
                self.fresh,
                &ev,
                false,
                self.clock,
                &t,
                &mut self.pop,
                &mut fx,
            );
            self.fresh = false;
            (applied, fx.outputs)
        }
    }

    #[test]
    fn first_appearance_publishes_from_null_then_only_changes() {
        let mut h = Harness::new(100);
        let (_, outputs) = h.apply("a", EventKind::Interaction { intent: false });
        assert_eq!(outputs.len(), 1);
        let j: serde_json::Value = serde_json::from_str(&outputs[0].to_json()).unwrap();
        assert_eq!(j["from"], serde_json::Value::Null);
        assert_eq!(j["to"]["lifecycle"], "new");
        assert_eq!(j["changed"].as_array().unwrap().len(), 3);
        let (_, outputs) = h.apply("b", EventKind::Interaction { intent: false });
        assert!(outputs.is_empty());
        assert_eq!(
            h.apply("b", EventKind::Interaction { intent: false }).0,
            Applied::Duplicate
        );
    }

    #[test]
    fn complaints_open_an_episode_and_a_purchase_ends_it() {
        let mut h = Harness::new(10);
        let complaint = EventKind::Complaint {
            severity: ComplaintSeverity::Low,
        };
        let mut outputs = h.apply("p", EventKind::Purchase { amount_micros: 1 }).1;
        outputs.extend(h.apply("c1", complaint).1);
        assert!(!outputs.iter().any(|o| o.kind == OutputType::ChurnWarning));
        outputs.extend(h.apply("c2", complaint).1);
        assert_eq!(
            outputs
                .iter()
                .filter(|o| o.kind == OutputType::ChurnWarning)
                .count(),
            1
        );
        let (_, outputs) = h.apply("c3", complaint);
        assert!(
            outputs.is_empty(),
            "same reason, same severity: no new warning"
        );
        let (_, outputs) = h.apply("p2", EventKind::Purchase { amount_micros: 1 });
        let kinds: Vec<_> = outputs.iter().map(|o| o.kind).collect();
        // The purchase ends the episode; the complaints still stand, so a new one opens.
        assert!(kinds.contains(&OutputType::ChurnRecovered));
        assert_eq!(kinds.last(), Some(&OutputType::ChurnWarning));
    }
}
