"""Control: freeze, thaw, kill, checkpoint and restore cgroups.

Which freezer (decided per target, see `operations.choose_freezer`):
- unified hosts: the cgroup2 freezer (`cgroup.freeze`, completion from `cgroup.events`);
- hybrid hosts: the v1 freezer (`freezer.state`) when the target's freezer cgroup holds exactly
  the target's processes (that is what runc and docker use there, so `runc state` stays
  truthful), else the cgroup2 freezer on the unified path;
- legacy hosts: the v1 freezer.
Thaw undoes both: a workload is running only when neither freezer holds it.
"""
