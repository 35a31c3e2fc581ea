//! CPU and memory limits for locally started instances, through cgroup v2 where the
//! machine allows it: a group per instance under `<cgroup2 mount>/presage/`, with
//! `cpu.max` and `memory.max`. Machines without a cgroup v2 hierarchy carrying the
//! `cpu`/`memory` controllers (cgroup v1 hosts, unprivileged containers) get a clear
//! reason instead, which the actuator reports.

use std::path::{Path, PathBuf};

/// Limits of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// CPU cores (0.5: half a core).
    pub cpu: Option<f64>,
    pub memory_mb: Option<u64>,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.cpu.is_some() || self.memory_mb.is_some()
    }

    fn controllers(&self) -> Vec<&'static str> {
        let mut c = Vec::new();
        if self.cpu.is_some() {
            c.push("cpu");
        }
        if self.memory_mb.is_some() {
            c.push("memory");
        }
        c
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
        if let Some(cores) = limits.cpu {
            write(&group.path.join("cpu.max"), &cpu_max(cores))?;
        }
        if let Some(mb) = limits.memory_mb {
            write(&group.path.join("memory.max"), &(mb << 20).to_string())?;
        }
        Ok(group)
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
