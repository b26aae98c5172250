//! What each CPU is doing in the scheduler, kept for diagnostics: a CPU that
//! does not answer an IPI is reported with it. The scheduler sets it; anyone
//! may read it (it sits below both the scheduler and the tasks).

use core::sync::atomic::{AtomicU8, Ordering};

use crate::arch::MAX_CPUS;

/// Where a CPU is in the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Activity {
    Outside = 0,
    Asleep,
    Seated,
    Idle,
    RunningTask,
    Finishing,
}

impl Activity {
    fn describe(self) -> &'static str {
        match self {
            Activity::Outside => "outside the scheduler",
            Activity::Asleep => "asleep, waiting for a run",
            Activity::Seated => "seated, waiting for the run to start",
            Activity::Idle => "idle in a run",
            Activity::RunningTask => "running a task's turn",
            Activity::Finishing => "giving back what a task held",
        }
    }
}

const ALL: [Activity; 6] = [
    Activity::Outside,
    Activity::Asleep,
    Activity::Seated,
    Activity::Idle,
    Activity::RunningTask,
    Activity::Finishing,
];

static ACTIVITY: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];

/// Records what the running CPU does now.
pub fn set(activity: Activity) {
    ACTIVITY[crate::arch::current_cpu_index() as usize].store(activity as u8, Ordering::Relaxed);
}

/// What CPU `cpu` was last doing in the scheduler.
pub fn describe(cpu: usize) -> &'static str {
    ALL.get(usize::from(ACTIVITY[cpu].load(Ordering::Relaxed)))
        .map_or("?", |activity| activity.describe())
}
