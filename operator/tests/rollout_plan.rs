//! The rollout planner on plain data: waves, canaries, health gates, soak, rollback, pause,
//! disruption budgets, resuming after a leader change, holding while the control plane rolls, and a
//! whole simulated rollout.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use trellis_api::mesh::{HealthGate, RolloutPhase, RolloutStatus};
use trellis_operator::dataplane::{MeshedPod, Owner, ProxyLink, ProxyRole, WorkloadKind, WorkloadRef};
use trellis_operator::rollout::plan::{Input, Plan, Progress, Workload, plan};
use trellis_operator::settings::{Batch, RolloutSettings};

const OLD: &str = "proxy:1";
const NEW: &str = "proxy:2";

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn settings(batch: u32) -> RolloutSettings {
    RolloutSettings {
        batch: Batch::Size(batch),
        canary_namespaces: Default::default(),
        canary_labels: Default::default(),
        pause: Duration::from_secs(30),
        progress_deadline: Duration::from_secs(600),
        paused: false,
        gates: HealthGate::ALL.into_iter().collect(),
    }
}

/// A toy cluster: workloads of one pod each, which a controller rolls on assignment.
#[derive(Debug, Clone)]
struct Cluster {
    workloads: Vec<Workload>,
    pods: Vec<MeshedPod>,
    links: BTreeMap<String, ProxyLink>,
    /// Images whose pods never become Ready.
    broken: Vec<String>,
    /// The injection template pods get when their controller (re)creates them.
    template: Option<String>,
    /// The injection template the injector applies now (the planner's input).
    injector: Option<String>,
}

fn id(ns: &str, name: &str) -> WorkloadRef {
    WorkloadRef {
        kind: WorkloadKind::Deployment,
        namespace: ns.into(),
        name: name.into(),
    }
}

impl Cluster {
    fn new(names: &[(&str, &str)]) -> Cluster {
        let mut c = Cluster {
            workloads: Vec::new(),
            pods: Vec::new(),
            links: BTreeMap::new(),
            broken: Vec::new(),
            template: None,
            injector: None,
        };
        for (ns, name) in names {
            c.workloads.push(Workload {
                id: id(ns, name),
                labels: BTreeMap::from([("app".to_string(), name.to_string())]),
                assigned: None,
                gateway: None,
                progress: Progress {
                    observed: true,
                    desired: 1,
                    updated: 1,
                    ready: 1,
                    total: 1,
                },
                budget_exhausted: false,
            });
            c.set_pod(&id(ns, name), OLD, 0);
        }
        c
    }

    fn set_pod(&mut self, w: &WorkloadRef, image: &str, generation: u32) {
        self.pods.retain(|p| p.owner != Owner::Workload(w.clone()));
        let ready = !self.broken.iter().any(|b| b == image);
        let pod = MeshedPod {
            namespace: w.namespace.clone(),
            name: format!("{}-{generation}", w.name),
            role: ProxyRole::Sidecar,
            proxy_ran: true,
            image: image.into(),
            owner: Owner::Workload(w.clone()),
            ready,
            restarts: 0,
            failing: None,
            template: self.template.clone(),
        };
        self.links.insert(
            pod.key(),
            ProxyLink {
                connected: ready,
                synced: ready,
            },
        );
        self.pods.push(pod);
        let wl = self.workloads.iter_mut().find(|x| &x.id == w).unwrap();
        wl.progress.ready = u32::from(ready);
    }

    fn input<'a>(&'a self, s: &'a RolloutSettings, status: Option<&'a RolloutStatus>, now: SystemTime) -> Input<'a> {
        Input {
            target: NEW,
            settings: s,
            workloads: &self.workloads,
            pods: &self.pods,
            links: &self.links,
            status,
            now,
            template: self.injector.as_deref(),
            control_plane: None,
        }
    }

    /// Make the plan's assignments and let each controller roll its pod.
    fn apply(&mut self, p: &Plan, generation: u32) {
        for a in &p.assignments {
            let w = self.workloads.iter_mut().find(|x| x.id == a.workload).unwrap();
            w.assigned = Some(a.image.clone());
            self.set_pod(&a.workload, &a.image, generation);
        }
    }
}

fn wave_names(status: &RolloutStatus) -> Vec<String> {
    status
        .wave_workloads
        .iter()
        .flatten()
        .map(|w| format!("{}/{}", w.namespace, w.name))
        .collect()
}

#[test]
fn canaries_go_first_in_waves_of_their_own_with_their_previous_image() {
    let c = Cluster::new(&[("shop", "a"), ("shop", "b"), ("staging", "c"), ("shop", "d")]);
    let mut s = settings(2);
    s.canary_namespaces.insert("staging".into());
    let p = plan(&c.input(&s, None, t0()));
    let status = p.status.unwrap();
    assert_eq!(status.phase, Some(RolloutPhase::Progressing));
    assert_eq!(status.wave, 1);
    assert_eq!(
        wave_names(&status),
        ["staging/c"],
        "the canary alone, though the batch is 2"
    );
    assert_eq!(
        status.wave_workloads.as_ref().unwrap()[0].previous_image.as_deref(),
        Some(OLD)
    );
    assert_eq!(p.assignments.len(), 1);
    assert_eq!(p.assignments[0].image, NEW);
    assert_eq!((status.updated, status.pending), (0, 4));
    assert_eq!(p.announcements[0].reason, "RolloutWaveStarted");
    assert!(p.announcements[0].message.contains("(canaries)"));
}

#[test]
fn a_whole_rollout_goes_wave_by_wave_gated_on_health_and_soak() {
    let names: Vec<(String, String)> = (0..7).map(|i| ("shop".to_string(), format!("w{i}"))).collect();
    let refs: Vec<(&str, &str)> = names.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let mut c = Cluster::new(&refs);
    let s = settings(3);
    let mut status: Option<RolloutStatus> = None;
    let mut now = t0();
    let mut waves = Vec::new();
    let mut restarting_at_once = 0;
    for step in 0..100 {
        let p = plan(&c.input(&s, status.as_ref(), now));
        restarting_at_once = restarting_at_once.max(p.assignments.len());
        c.apply(&p, step + 1);
        status = p.status;
        let st = status.as_ref().unwrap();
        if p.announcements.iter().any(|a| a.reason == "RolloutWaveStarted") {
            waves.push(wave_names(st));
        }
        if st.phase == Some(RolloutPhase::Complete) {
            break;
        }
        now += Duration::from_secs(10);
    }
    let st = status.unwrap();
    assert_eq!(st.phase, Some(RolloutPhase::Complete));
    assert_eq!((st.updated, st.pending), (7, 0));
    assert_eq!(waves.len(), 3, "7 workloads in waves of 3: {waves:?}");
    assert_eq!(restarting_at_once, 3, "never more than a batch restarting");
    assert!(c.pods.iter().all(|p| p.image == NEW));
    let all: Vec<String> = waves.concat();
    let mut unique = all.clone();
    unique.dedup();
    assert_eq!(all.len(), 7, "no workload is in two waves: {waves:?}");
}

#[test]
fn the_next_wave_waits_for_health_and_for_the_soak() {
    let mut c = Cluster::new(&[("shop", "a"), ("shop", "b")]);
    let s = settings(1);
    let p1 = plan(&c.input(&s, None, t0()));
    // The controller has not rolled yet: the wave waits (and re-asserts nothing already done).
    c.workloads[0].assigned = Some(NEW.into());
    c.workloads[0].progress.updated = 0;
    let st1 = p1.status.unwrap();
    let p2 = plan(&c.input(&s, Some(&st1), t0() + Duration::from_secs(5)));
    assert!(p2.assignments.is_empty());
    assert_eq!(p2.status.as_ref().unwrap().phase, Some(RolloutPhase::Progressing));
    assert_eq!(p2.status.as_ref().unwrap().wave, 1);

    // Rolled and Ready, but its proxy has not ACKed: still waiting.
    c.workloads[0].progress.updated = 1;
    c.set_pod(&id("shop", "a"), NEW, 1);
    c.links.insert(
        "shop/a-1".into(),
        ProxyLink {
            connected: true,
            synced: false,
        },
    );
    let p3 = plan(&c.input(&s, Some(&st1), t0() + Duration::from_secs(6)));
    assert_eq!(p3.status.as_ref().unwrap().phase, Some(RolloutPhase::Progressing));

    // ACKed: healthy, the soak starts; the next wave only after the pause.
    c.links.insert(
        "shop/a-1".into(),
        ProxyLink {
            connected: true,
            synced: true,
        },
    );
    let p4 = plan(&c.input(&s, Some(&st1), t0() + Duration::from_secs(7)));
    let st4 = p4.status.unwrap();
    assert_eq!(st4.phase, Some(RolloutPhase::Soaking));
    assert_eq!(p4.announcements[0].reason, "RolloutWaveFinished");
    let p5 = plan(&c.input(&s, Some(&st4), t0() + Duration::from_secs(20)));
    assert_eq!(p5.status.as_ref().unwrap().phase, Some(RolloutPhase::Soaking));
    assert!(p5.assignments.is_empty());
    let p6 = plan(&c.input(&s, Some(&st4), t0() + Duration::from_secs(40)));
    let st6 = p6.status.unwrap();
    assert_eq!((st6.phase, st6.wave), (Some(RolloutPhase::Progressing), 2));
    assert_eq!(wave_names(&st6), ["shop/b"]);
}

#[test]
fn the_rollout_holds_while_the_control_plane_rolls() {
    let mut c = Cluster::new(&[("shop", "a"), ("shop", "b")]);
    let s = settings(1);
    let rolling = "Deployment trellis-system/trellis-operator is rolling (1 of 2 replicas updated, 3 in all)";
    let held = |c: &Cluster, status: Option<&RolloutStatus>, now: SystemTime| {
        plan(&Input {
            control_plane: Some(rolling),
            ..c.input(&s, status, now)
        })
    };
    // A new target: no wave starts.
    let p0 = held(&c, None, t0());
    assert_eq!((p0.status, p0.assignments.len(), p0.announcements.len()), (None, 0, 0));

    // Wave 1, healthy: soaking.
    let p1 = plan(&c.input(&s, None, t0()));
    c.apply(&p1, 1);
    let st1 = p1.status.unwrap();
    let st2 = plan(&c.input(&s, Some(&st1), t0() + Duration::from_secs(5)))
        .status
        .unwrap();
    assert_eq!(st2.phase, Some(RolloutPhase::Soaking));

    // The operator rolls: the wave's proxy moves to a new replica, disconnected meanwhile.
    // Judged, the soak would fail; held, nothing is judged, started or announced.
    c.links.insert(
        "shop/a-1".into(),
        ProxyLink {
            connected: false,
            synced: false,
        },
    );
    let now = t0() + Duration::from_secs(10);
    let judged = plan(&c.input(&s, Some(&st2), now)).status.unwrap();
    assert_eq!(judged.phase, Some(RolloutPhase::RolledBack), "{judged:?}");
    let p3 = held(&c, Some(&st2), now);
    assert_eq!(p3.status.as_ref(), Some(&st2));
    assert!(p3.assignments.is_empty() && p3.announcements.is_empty());
    // Past the soak too: the next wave waits for the control plane.
    assert_eq!(
        held(&c, Some(&st2), t0() + Duration::from_secs(60)).status.as_ref(),
        Some(&st2)
    );

    // Rolled, the proxy reconnected: the soak is over, wave 2 starts.
    c.links.insert(
        "shop/a-1".into(),
        ProxyLink {
            connected: true,
            synced: true,
        },
    );
    let st4 = plan(&c.input(&s, Some(&st2), t0() + Duration::from_secs(60)))
        .status
        .unwrap();
    assert_eq!((st4.phase, st4.wave), (Some(RolloutPhase::Progressing), 2));
    assert_eq!(wave_names(&st4), ["shop/b"]);
}

#[test]
fn a_wave_not_ready_by_its_deadline_is_rolled_back_and_stays_so() {
    let mut c = Cluster::new(&[("shop", "a"), ("shop", "b"), ("shop", "c")]);
    c.broken.push(NEW.into());
    let mut s = settings(1);
    s.progress_deadline = Duration::from_secs(60);
    let p1 = plan(&c.input(&s, None, t0()));
    c.apply(&p1, 1);
    let st1 = p1.status.unwrap();
    let p2 = plan(&c.input(&s, Some(&st1), t0() + Duration::from_secs(30)));
    assert_eq!(p2.status.as_ref().unwrap().phase, Some(RolloutPhase::Progressing));
    let p3 = plan(&c.input(&s, Some(&st1), t0() + Duration::from_secs(61)));
    let st3 = p3.status.clone().unwrap();
    assert_eq!(st3.phase, Some(RolloutPhase::RolledBack));
    let failure = st3.failure.as_ref().unwrap();
    assert_eq!(failure.workload, "Deployment shop/a");
    assert_eq!(failure.reason, "ProgressDeadline");
    assert!(failure.message.contains("pod a-1 is not Ready"), "{}", failure.message);
    assert_eq!(p3.assignments.len(), 1);
    assert_eq!(
        (
            p3.assignments[0].workload.name.as_str(),
            p3.assignments[0].image.as_str()
        ),
        ("a", OLD)
    );
    assert!(p3.announcements[0].warning);
    c.apply(&p3, 2);
    // Rolled back: no further wave, nothing to re-assert, for as long as the Mesh asks for NEW.
    let p4 = plan(&c.input(&s, Some(&st3), t0() + Duration::from_secs(3600)));
    assert!(p4.assignments.is_empty());
    assert_eq!(p4.status.as_ref().unwrap().phase, Some(RolloutPhase::RolledBack));
    assert!(
        c.pods
            .iter()
            .filter(|p| p.name.starts_with('b') || p.name.starts_with('c'))
            .all(|p| p.image == OLD)
    );
}

#[test]
fn a_crash_loop_rolls_the_wave_back_at_once() {
    let mut c = Cluster::new(&[("shop", "a"), ("shop", "b")]);
    let s = settings(1);
    let p1 = plan(&c.input(&s, None, t0()));
    c.apply(&p1, 1);
    let st1 = p1.status.unwrap();
    let pod = c.pods.iter_mut().find(|p| p.name == "a-1").unwrap();
    pod.restarts = 1;
    pod.failing = Some("container trellis-proxy is CrashLoopBackOff".into());
    let p2 = plan(&c.input(&s, Some(&st1), t0() + Duration::from_secs(3)));
    let st2 = p2.status.unwrap();
    assert_eq!(st2.phase, Some(RolloutPhase::RolledBack));
    assert_eq!(st2.failure.unwrap().reason, "NoRestarts");
}

#[test]
fn a_paused_rollout_starts_no_wave_until_resumed() {
    let c = Cluster::new(&[("shop", "a")]);
    let mut s = settings(1);
    s.paused = true;
    let p = plan(&c.input(&s, None, t0()));
    assert!(p.assignments.is_empty());
    let st = p.status.unwrap();
    assert_eq!(st.phase, Some(RolloutPhase::Paused));
    assert_eq!(p.announcements[0].reason, "RolloutPaused");
    s.paused = false;
    let p = plan(&c.input(&s, Some(&st), t0()));
    assert_eq!(p.status.unwrap().phase, Some(RolloutPhase::Progressing));
    assert_eq!(p.assignments.len(), 1);
}

#[test]
fn workloads_whose_budget_is_exhausted_wait_and_standalone_pods_are_never_rolled() {
    let mut c = Cluster::new(&[("shop", "a"), ("shop", "b")]);
    c.workloads[0].budget_exhausted = true;
    c.pods.push(MeshedPod {
        namespace: "shop".into(),
        name: "debug".into(),
        role: ProxyRole::Sidecar,
        proxy_ran: true,
        image: OLD.into(),
        owner: Owner::Standalone,
        ready: true,
        restarts: 0,
        failing: None,
        template: None,
    });
    let s = settings(5);
    let p = plan(&c.input(&s, None, t0()));
    assert_eq!(wave_names(p.status.as_ref().unwrap()), ["shop/b"]);
    assert!(p.assignments.iter().all(|a| a.workload.name == "b"));
}

#[test]
fn a_new_leader_finishes_the_wave_under_way_without_starting_it_again() {
    let mut c = Cluster::new(&[("shop", "a"), ("shop", "b"), ("shop", "c")]);
    let s = settings(2);
    let p1 = plan(&c.input(&s, None, t0()));
    let st1 = p1.status.clone().unwrap();
    // The old leader wrote the status, assigned the first workload of the wave, then died.
    let first = p1.assignments[0].clone();
    c.workloads
        .iter_mut()
        .find(|w| w.id == first.workload)
        .unwrap()
        .assigned = Some(NEW.into());
    let p2 = plan(&c.input(&s, Some(&st1), t0() + Duration::from_secs(15)));
    let st2 = p2.status.unwrap();
    assert_eq!(st2.wave, 1, "the same wave");
    assert_eq!(wave_names(&st2), wave_names(&st1));
    assert_eq!(
        p2.assignments.len(),
        1,
        "only the assignment the old leader did not make"
    );
    assert_ne!(p2.assignments[0].workload, first.workload);
    assert!(p2.announcements.is_empty(), "no second 'wave started'");
}

#[test]
fn a_rollout_that_is_done_says_complete_once() {
    let mut c = Cluster::new(&[("shop", "a")]);
    c.set_pod(&id("shop", "a"), NEW, 1);
    let s = settings(1);
    assert_eq!(
        plan(&c.input(&s, None, t0())).status,
        None,
        "nothing ever rolled: no status"
    );
    let previous = RolloutStatus {
        target_image: OLD.into(),
        phase: Some(RolloutPhase::Complete),
        wave: 4,
        ..RolloutStatus::default()
    };
    let p = plan(&c.input(&s, Some(&previous), t0()));
    let st = p.status.unwrap();
    assert_eq!(
        (st.target_image.as_str(), st.phase),
        (NEW, Some(RolloutPhase::Complete))
    );
    assert!(p.assignments.is_empty());
}

#[test]
fn a_new_injection_template_rolls_every_workload_in_waves_though_the_image_is_the_same() {
    let mut c = Cluster::new(&[("shop", "a"), ("shop", "b")]);
    c.template = Some("t1".into());
    c.injector = Some("t1".into());
    for (i, w) in [id("shop", "a"), id("shop", "b")].iter().enumerate() {
        c.workloads[i].assigned = Some(NEW.into());
        c.set_pod(w, NEW, 1);
    }
    let s = settings(1);
    let steady = plan(&c.input(&s, None, t0()));
    assert!(steady.assignments.is_empty() && steady.status.is_none(), "{steady:?}");

    // The operator is upgraded: its injector meshes pods differently (template t2).
    c.injector = Some("t2".into());
    c.template = Some("t2".into());
    let mut status: Option<RolloutStatus> = None;
    let mut now = t0();
    let mut waves = Vec::new();
    for step in 0..50 {
        let p = plan(&c.input(&s, status.as_ref(), now));
        if let Some(st) = &status
            && st.phase == Some(RolloutPhase::Progressing)
            && p.status
                .as_ref()
                .is_some_and(|n| n.phase == Some(RolloutPhase::Progressing) && n.wave == st.wave)
        {
            // While a wave waits, the pods still on t1 are what it waits for.
            assert!(p.assignments.is_empty());
        }
        c.apply(&p, step + 2);
        status = p.status;
        let st = status.as_ref().unwrap();
        if p.announcements.iter().any(|a| a.reason == "RolloutWaveStarted") {
            waves.push(wave_names(st));
        }
        if st.phase == Some(RolloutPhase::Complete) {
            break;
        }
        now += Duration::from_secs(40);
    }
    assert_eq!(waves, [vec!["shop/a".to_string()], vec!["shop/b".to_string()]]);
    assert_eq!(status.unwrap().phase, Some(RolloutPhase::Complete));
    assert!(
        c.pods
            .iter()
            .all(|p| p.template.as_deref() == Some("t2") && p.image == NEW),
        "every pod re-injected with the new template, on the same image: {:?}",
        c.pods
    );
}
