//! CPU and memory limits for locally started instances, through cgroup v2 where the
//! machine allows it: a group per instance under `<cgroup2 mount>/presage/`, with
//! `cpu.max` and `memory.max`. Machines without a cgroup v2 hierarchy carrying the
//! `cpu`/`memory` controllers (cgroup v1 hosts, unprivileged containers) get a clear
//! reason instead, which the actuator reports.

use std::path::{Path, PathBuf};

/// Limits of one instance: caps from the actuator's config, and the share and
/// guarantee of the QoS tier it serves (which change with the traffic, in place).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// CPU cores (0.5: half a core): `cpu.max`.
    pub cpu: Option<f64>,
    /// `memory.max`.
    pub memory_mb: Option<u64>,
    /// `cpu.weight` (1..10000): the tier's `cpu_shares`.
    pub cpu_weight: Option<u32>,
    /// `memory.min`: the tier's guaranteed `memory_mb`.
    pub memory_min_mb: Option<u64>,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.cpu.is_some()
            || self.memory_mb.is_some()
            || self.cpu_weight.is_some()
            || self.memory_min_mb.is_some()
    }

    fn controllers(&self) -> Vec<&'static str> {
        let mut c = Vec::new();
        if self.cpu.is_some() || self.cpu_weight.is_some() {
            c.push("cpu");
        }
        if self.memory_mb.is_some() || self.memory_min_mb.is_some() {
            c.push("memory");
        }
        c
    }

    /// The files and values that apply these limits.
    pub fn files(&self) -> Vec<(&'static str, String)> {
        let mut f = Vec::new();
        if let Some(cores) = self.cpu {
            f.push(("cpu.max", cpu_max(cores)));
        }
        if let Some(mb) = self.memory_mb {
            f.push(("memory.max", (mb << 20).to_string()));
        }
        if let Some(w) = self.cpu_weight {
            f.push(("cpu.weight", w.clamp(1, 10_000).to_string()));
        }
        if let Some(mb) = self.memory_min_mb {
            f.push(("memory.min", (mb << 20).to_string()));
        }
        f
    }
}

/// `cpu.max` for `cores`: quota and period in microseconds.
pub fn cpu_max(cores: f64) -> String {
    const PERIOD: u64 = 100_000;
    let quota = (cores * PERIOD as f64).round().max(1000.0) as u64;
    format!("{quota} {PERIOD}")
}

/// The cgroup v2 mount point, from a mountinfo text (`/proc/self/mountinfo`).
pub fn mount_point(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        // `... mount_point options - fstype source super_options`
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// One instance's group; removed on drop (the process has exited by then).
#[derive(Debug)]
pub struct Group {
    path: PathBuf,
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

impl Group {
    /// Creates the group `name` with `limits`; the error says why the machine does not
    /// allow it.
    pub fn create(name: &str, limits: &Limits) -> Result<Group, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let root = mount_point(&mountinfo).ok_or("no cgroup v2 hierarchy is mounted")?;
        let available = std::fs::read_to_string(root.join("cgroup.controllers"))
            .map_err(|e| format!("cannot read {}/cgroup.controllers: {e}", root.display()))?;
        let wanted = limits.controllers();
        let missing: Vec<_> = wanted
            .iter()
            .filter(|c| !available.split_whitespace().any(|a| a == **c))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the cgroup v2 hierarchy at {} has no {missing:?} controller (this host delegates it to cgroup v1 or not at all)",
                root.display()
            ));
        }
        let enable = wanted
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        let parent = root.join("presage");
        write(&root.join("cgroup.subtree_control"), &enable)?;
        std::fs::create_dir_all(&parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        write(&parent.join("cgroup.subtree_control"), &enable)?;
        let path = parent.join(name);
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let group = Group { path };
        group.set(limits)?;
        Ok(group)
    }

    /// Applies `limits` to the running group (an in-place resize).
    pub fn set(&self, limits: &Limits) -> Result<(), String> {
        for (file, value) in limits.files() {
            write(&self.path.join(file), &value)?;
        }
        Ok(())
    }

    /// A group at `path` as it is, for tests that stand a plain directory in for a
    /// cgroup (writing its files needs no delegated hierarchy).
    #[cfg(test)]
    pub fn at(path: PathBuf) -> Group {
        Group { path }
    }

    /// Moves process `pid` into the group.
    pub fn add(&self, pid: u32) -> Result<(), String> {
        write(&self.path.join("cgroup.procs"), &pid.to_string())
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_is_quota_over_a_100ms_period() {
        assert_eq!(cpu_max(0.5), "50000 100000");
        assert_eq!(cpu_max(2.0), "200000 100000");
        // The kernel's minimum quota is 1 ms.
        assert_eq!(cpu_max(0.0001), "1000 100000");
    }

    #[test]
    fn limits_become_cgroup_files() {
        let l = Limits {
            cpu: Some(0.5),
            memory_mb: Some(256),
            cpu_weight: Some(400),
            memory_min_mb: Some(128),
        };
        assert_eq!(
            l.files(),
            vec![
                ("cpu.max", "50000 100000".to_string()),
                ("memory.max", (256u64 << 20).to_string()),
                ("cpu.weight", "400".to_string()),
                ("memory.min", (128u64 << 20).to_string()),
            ]
        );
        assert_eq!(l.controllers(), vec!["cpu", "memory"]);
        assert!(!Limits::default().any());
    }

    #[test]
    fn the_cgroup2_mount_is_found_among_v1_mounts() {
        let hybrid = "\
35 25 0:30 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
36 25 0:31 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
";
        assert_eq!(
            mount_point(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            mount_point("35 25 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"),
            None
        );
    }
}
