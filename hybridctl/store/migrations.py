"""Forward-only schema migrations, each an ordered function recorded in `_migrations` and run in
one transaction, after sqlite-utils' migrations pattern. Never edit a released migration: add one."""

from __future__ import annotations

import sqlite3
import time
from typing import Callable

Migration = Callable[[sqlite3.Connection], None]


def _run(db: sqlite3.Connection, script: str) -> None:
    # Not executescript(): it COMMITs first, which would break the migration's transaction.
    # Statements are cut where SQLite says one is complete, so ';' inside comments is harmless.
    stmt = ""
    for line in script.splitlines(keepends=True):
        stmt += line
        if sqlite3.complete_statement(stmt):
            db.execute(stmt)
            stmt = ""
    if stmt.strip() and not all(ln.strip().startswith("--") or not ln.strip() for ln in stmt.splitlines()):
        raise ValueError(f"incomplete SQL statement in migration: {stmt.strip()[:80]}")


def m001_initial(db: sqlite3.Connection) -> None:
    _run(
        db,
        """
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            uid INTEGER NOT NULL,
            user TEXT NOT NULL,
            gid INTEGER NOT NULL,
            grp TEXT NOT NULL,
            name TEXT NOT NULL,
            spec TEXT NOT NULL,            -- JobSpec.to_dict() as JSON
            priority INTEGER NOT NULL,
            submitted_at REAL NOT NULL,
            num_tasks INTEGER NOT NULL,    -- 1 for a plain job, N for an array
            array_spec TEXT,               -- '1-100%10' for arrays, else NULL
            throttle INTEGER,
            gpus INTEGER NOT NULL,
            gpu_type TEXT,
            cpus REAL NOT NULL,
            memory_mb INTEGER NOT NULL,
            num_nodes INTEGER NOT NULL,
            placement TEXT NOT NULL,
            use_spot INTEGER NOT NULL DEFAULT 1,
            max_restarts INTEGER NOT NULL,
            depends_on TEXT NOT NULL DEFAULT '[]'
        );
        CREATE TABLE tasks (
            job_id INTEGER NOT NULL REFERENCES jobs(id),
            task INTEGER NOT NULL,         -- 0 for a plain job, the array index otherwise
            state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            attempt INTEGER NOT NULL DEFAULT 0,
            nodes TEXT NOT NULL DEFAULT '',  -- comma list, one per rank
            gpus TEXT NOT NULL DEFAULT '',   -- GPU indices of rank 0, comma list
            started_at REAL,
            ended_at REAL,
            exit_code INTEGER,
            updated_at REAL NOT NULL,
            PRIMARY KEY (job_id, task)
        ) WITHOUT ROWID;
        CREATE INDEX tasks_state ON tasks(state);
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            job_id INTEGER NOT NULL,
            task INTEGER,                  -- NULL: the event is about the whole job (submit)
            time REAL NOT NULL,
            from_state TEXT,
            to_state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            actor_uid INTEGER              -- NULL: the controller itself
        );
        CREATE INDEX events_job ON events(job_id);
        CREATE TABLE nodes (
            name TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            port INTEGER NOT NULL,
            ssh_user TEXT,
            identity TEXT,
            agent_socket TEXT,
            site TEXT NOT NULL,
            link_state TEXT NOT NULL,        -- UP, UNREACHABLE or LOST: can the controller reach it
            link_reason TEXT NOT NULL DEFAULT '',
            drained INTEGER NOT NULL DEFAULT 0,  -- an admin's drain, independent of the link
            drain_reason TEXT NOT NULL DEFAULT '',
            last_seen REAL,
            gpus TEXT NOT NULL DEFAULT '[]', -- [{index, model, memory_mb, healthy, reason}]
            cpus REAL NOT NULL DEFAULT 0,
            memory_mb INTEGER NOT NULL DEFAULT 0,
            simulated INTEGER NOT NULL DEFAULT 0,
            added_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE allocations (
            id INTEGER PRIMARY KEY,
            job_id INTEGER NOT NULL,
            task INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            rank INTEGER NOT NULL,
            node TEXT NOT NULL,
            gpus TEXT NOT NULL,            -- JSON list of GPU indices
            cpus REAL NOT NULL,
            memory_mb INTEGER NOT NULL,
            user TEXT NOT NULL,
            grp TEXT NOT NULL,
            start REAL NOT NULL,
            end REAL,                      -- NULL while held
            exit_code INTEGER              -- this rank's exit code, once it ended
        );
        CREATE INDEX allocations_open ON allocations(end) WHERE end IS NULL;
        CREATE INDEX allocations_task ON allocations(job_id, task);
        """
    )


def m002_cloud(db: sqlite3.Connection) -> None:
    """Cloud bursting: which nodes are rented instances, the instances themselves, and what they cost."""
    _run(
        db,
        """
        ALTER TABLE nodes ADD COLUMN provider TEXT;       -- NULL for nodes that are not rented
        ALTER TABLE nodes ADD COLUMN instance_id TEXT;
        ALTER TABLE nodes ADD COLUMN price_hourly REAL;
        ALTER TABLE nodes ADD COLUMN launched_at REAL;
        CREATE TABLE cloud_instances (
            instance_id TEXT PRIMARY KEY,  -- the provider's id, or 'launch:<node>' until it answered
            provider TEXT NOT NULL,
            node TEXT NOT NULL,            -- the node name it joins as
            offer TEXT NOT NULL,           -- Offer.to_dict() as JSON, at launch
            price_hourly REAL NOT NULL,    -- what it costs now (spot prices drift)
            state TEXT NOT NULL,           -- launching, bootstrapping, up, draining, terminated, failed
            reason TEXT NOT NULL DEFAULT '',
            host TEXT,
            port INTEGER,
            files_root TEXT,               -- real path behind SFTP's '/', for chrooted SFTP
            for_tasks TEXT NOT NULL DEFAULT '[]',  -- [[job, task], ...] it was rented for
            launched_at REAL NOT NULL,
            ready_at REAL,
            ended_at REAL,
            billed_until REAL NOT NULL,    -- cost is accrued up to here
            spent_usd REAL NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        );
        CREATE INDEX cloud_instances_state ON cloud_instances(state);
        CREATE INDEX cloud_instances_node ON cloud_instances(node);
        CREATE TABLE cloud_costs (         -- accrued $ per instance and job (job 0: idle time)
            instance_id TEXT NOT NULL,
            node TEXT NOT NULL,
            job_id INTEGER NOT NULL,
            task INTEGER NOT NULL,
            user TEXT NOT NULL,            -- '' for idle time
            usd REAL NOT NULL DEFAULT 0,
            hours REAL NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL,
            PRIMARY KEY (instance_id, job_id, task)
        ) WITHOUT ROWID;
        CREATE TABLE cloud_spend (         -- $ per UTC day, for budgets per day/week/month
            day TEXT PRIMARY KEY,
            usd REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE cloud_backoff (       -- pools not asked again until `until` (capacity errors)
            pool TEXT PRIMARY KEY,
            until REAL NOT NULL,
            reason TEXT NOT NULL
        ) WITHOUT ROWID;
        """
    )


def m003_restarts(db: sqlite3.Connection) -> None:
    """Restarts counted against max_restarts, apart from `attempt`: requeues for an exit code in
    recover_on_exit_codes start a new attempt without using one up."""
    _run(db, "ALTER TABLE tasks ADD COLUMN restarts INTEGER NOT NULL DEFAULT 0;")


def m004_node_cpus(db: sqlite3.Connection) -> None:
    """An admin's CPU count for a node (config `cpus:` or `node add --cpus`), which wins over the
    count its agent reports; NULL: use the agent's."""
    _run(db, "ALTER TABLE nodes ADD COLUMN cpus_override REAL;")


def m005_recoveries(db: sqlite3.Connection) -> None:
    """Requeues the job did not cause (preemption, a lost node, an exit code in
    recover_on_exit_codes), counted apart from `restarts`: they never use up max_restarts, only
    the controller's sanity cap `recovery.max_recoveries`. `recovery_causes` is a JSON object of
    counts by cause ({"preemption": 2}) for `show`."""
    _run(db, "ALTER TABLE tasks ADD COLUMN recoveries INTEGER NOT NULL DEFAULT 0;")
    _run(db, "ALTER TABLE tasks ADD COLUMN recovery_causes TEXT NOT NULL DEFAULT '{}';")


def m006_candidates(db: sqlite3.Connection) -> None:
    """Accelerator candidates (SkyPilot's `{L4:8, A10G:8}`, `[A100:8, H100:8]`, any_of/ordered):
    `jobs.alternatives` is '' for a job with one GPU type, else JSON {"ordered": bool, "of":
    [[type, count], ...]} for the scheduler; `tasks.gpu_type` the candidate its current attempt
    was placed with (NULL: the job's only type), for `show`."""
    _run(db, "ALTER TABLE jobs ADD COLUMN alternatives TEXT NOT NULL DEFAULT '';")
    _run(db, "ALTER TABLE tasks ADD COLUMN gpu_type TEXT;")


def m007_slurm_dependencies(db: sqlite3.Connection) -> None:
    """Slurm's dependency kinds and job sharing: `jobs.dependencies` is JSON [[kind, job id], ...]
    of the after/afterany/afternotok dependencies (afterok ones stay in `depends_on`);
    `jobs.singleton` 1 for `--dependency=singleton` (found by user and name, hence the index);
    `jobs.exclusive` 1 for `--exclusive` (its nodes run nothing else)."""
    _run(db, "ALTER TABLE jobs ADD COLUMN dependencies TEXT NOT NULL DEFAULT '[]';")
    _run(db, "ALTER TABLE jobs ADD COLUMN singleton INTEGER NOT NULL DEFAULT 0;")
    _run(db, "ALTER TABLE jobs ADD COLUMN exclusive INTEGER NOT NULL DEFAULT 0;")
    _run(db, "CREATE INDEX jobs_user_name ON jobs(user, name);")


def m008_owner_spend(db: sqlite3.Connection) -> None:
    """Cloud spend per user and per group as well as per lab, for their own budgets
    (`cloud.burst.user_budget_usd`, `group_budget_usd`): `cloud_costs.grp` books each charge to
    the job's group too (`cloud cost --by group`), and `cloud_spend_owner` sums the charges per UTC
    day and owner ('user' or 'group'), as `cloud_spend` does for the lab. Charges booked before
    take their job's group, so `--by group` does not file them as idle time; `cloud_spend_owner`
    starts empty (owner budgets count what is spent from the upgrade on)."""
    _run(db, "ALTER TABLE cloud_costs ADD COLUMN grp TEXT NOT NULL DEFAULT '';")
    _run(db, "UPDATE cloud_costs SET grp=COALESCE((SELECT grp FROM jobs WHERE jobs.id=cloud_costs.job_id), '')"
             " WHERE job_id<>0;")
    _run(db, "CREATE TABLE cloud_spend_owner (day TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,"
             " usd REAL NOT NULL, PRIMARY KEY (day, kind, name)) WITHOUT ROWID;")


def m009_backoff_nodes(db: sqlite3.Connection) -> None:
    """A pool that refused a gang of k nodes is closed to launches of k nodes or more, not to one
    node (`cloud_backoff.nodes`; 1 = closed to every launch, as every row before)."""
    _run(db, "ALTER TABLE cloud_backoff ADD COLUMN nodes INTEGER NOT NULL DEFAULT 1;")


MIGRATIONS: list[Migration] = [m001_initial, m002_cloud, m003_restarts, m004_node_cpus, m005_recoveries,
                               m006_candidates, m007_slurm_dependencies, m008_owner_spend, m009_backoff_nodes]


def migrate(db: sqlite3.Connection) -> int:
    """Apply every migration not yet recorded; return the schema version (count applied in all)."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    db.commit()
    done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        # BEGIN IMMEDIATE so that two controllers racing on a fresh file cannot both migrate.
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM _migrations WHERE name=?", (fn.__name__,)).fetchone():
                db.execute("ROLLBACK")
                continue
            fn(db)
            db.execute("INSERT INTO _migrations VALUES (?, ?)", (fn.__name__, time.time()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)
