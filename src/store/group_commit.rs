//! Group commit across request actors (issue 13, item 3): transitions that arrive while
//! the writers are busy are written together, in one transaction, so one commit (one WAL
//! flush on a durable PostgreSQL) carries many of them.
//!
//! There is no timer: a writer takes whatever is queued when it gets to it (up to
//! `max_rows`), so an idle engine writes each transition at once, alone, exactly as
//! before (one statement, its own implicit transaction), and a busy one writes larger
//! groups the longer each commit takes. The transitions of one kind in a group are one
//! multi-row statement over `unnest` arrays (`transition_batch`), each row with its own
//! version check: a lost race comes back to its own actor as no row (its
//! `ConcurrencyConflict`), never the group's failure. A statement the database refuses in
//! a group (a constraint, a refused value, a deadlock) aborts the group's transaction; then
//! every transition of the group is written again alone, so the failing one fails by
//! itself and the others commit. Any other failure (no connection in time, the connection
//! lost, possibly during the commit) is every transition's error, as it would have been
//! alone: each actor fails and is rebuilt from the database, which says whether its change
//! was committed; nothing is retried blindly, so nothing waits behind a dead database.
//!
//! An actor gets its answer only after the commit that made it durable, so it pushes an
//! offer only after its transition committed, as before.
//!
//! The writers take turns rather than run side by side: the queue is held by one writer
//! from gathering its group until its commit starts, and the next writer gathers and runs
//! its own group while that commit waits for its WAL flush. Two writers running at once
//! split what arrived into two smaller groups, so more statements for the same
//! transitions: in paired runs at 500 creates/s end to end that cost PostgreSQL about a
//! fifth more CPU per request and raised the create → offer p99 by about half
//! (docs/benchmarks.md, "The write path, fourth round"). A writer passes its turn early,
//! before a statement, once as many transitions are waiting as its group holds: then the
//! next group is no smaller for starting at once, and the two groups' statements use two
//! cores. Strict turns cost the transitions bench (PostgreSQL alone on the cores, 32
//! clients) about a seventh of its throughput; passing early won it back.

use std::sync::Arc;

use sqlx::{pool::PoolConnection, Connection, PgConnection, PgPool, Postgres};
use tokio::sync::{mpsc, oneshot, Mutex, OnceCell, OwnedMutexGuard};

use std::collections::{BTreeMap, HashSet};

use super::{
    transition::TransitionArgs,
    transition_batch::{self, BatchKind},
    ServiceRequest,
};

type Answer = Result<Option<ServiceRequest>, sqlx::Error>;

struct Job {
    args: TransitionArgs,
    reply: oneshot::Sender<Answer>,
}

/// The queue of transitions and its writers, started on first use.
#[derive(Debug, Clone)]
pub(super) struct GroupCommit {
    /// Most transitions per commit; 1 writes each alone (no queue, no writers).
    max_rows: usize,
    /// Writers taking turns (one gathering and running its statements while the others'
    /// commits finish). Each holds one pooled connection for as long as it runs, so a pool
    /// gets at most one writer per four connections (at least one): the rest stay for
    /// reads, the relay and the rare statements outside the group commit.
    writers: usize,
    queue: Arc<OnceCell<mpsc::UnboundedSender<Job>>>,
}

impl GroupCommit {
    pub(super) fn new(max_rows: usize, writers: usize) -> GroupCommit {
        GroupCommit {
            max_rows: max_rows.max(1),
            writers: writers.max(1),
            queue: Arc::default(),
        }
    }

    pub(super) fn max_rows(&self) -> usize {
        self.max_rows
    }

    pub(super) fn writers(&self) -> usize {
        self.writers
    }

    /// Writes one transition, alone or in a group; returns its row (`None`: its guard did
    /// not match) once the commit that carries it is done.
    pub(super) async fn write(&self, pool: &PgPool, args: TransitionArgs) -> Answer {
        // A pool of one connection cannot spare one for a writer to hold.
        if self.max_rows == 1 || pool.options().get_max_connections() < 2 {
            return args.query().fetch_optional(pool).await;
        }
        let queue = self
            .queue
            .get_or_init(|| async { self.start(pool.clone()) })
            .await;
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = queue.send(Job { args, reply }) {
            // The writers are gone (their runtime is shutting down): write it here.
            return job.args.query().fetch_optional(pool).await;
        }
        answer.await.map_err(|_| sqlx::Error::WorkerCrashed)?
    }

    fn start(&self, pool: PgPool) -> mpsc::UnboundedSender<Job> {
        let (queue, jobs) = mpsc::unbounded_channel();
        let jobs = Arc::new(Mutex::new(jobs));
        let writers = self
            .writers
            .min(pool.options().get_max_connections() as usize / 4)
            .max(1);
        for _ in 0..writers {
            tokio::spawn(writer(pool.clone(), jobs.clone(), self.max_rows));
        }
        queue
    }
}

/// Takes the first queued transition and whatever else is queued behind it, writes them,
/// answers each, and starts again.
///
/// A writer keeps its connection from one group to the next instead of returning it to the
/// pool: sqlx pings every connection it takes back (a round trip, before anyone else may
/// use it), which was one extra round trip per group. The connection is let go when it
/// failed (anything but the database refusing a statement: it may be broken) and when the
/// pool closes, so `Pool::close` (which waits for every connection) is not held up.
async fn writer(pool: PgPool, jobs: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>, max_rows: usize) {
    let mut held: Option<PoolConnection<Postgres>> = None;
    let mut closed = std::pin::pin!(pool.close_event());
    loop {
        let mut group = Vec::new();
        // The queue is this writer's turn: held while it gathers and runs its statements,
        // let go when its commit starts (`write_group`), so the next writer gathers what
        // arrived meanwhile and runs it while this commit waits for its WAL flush; or sooner,
        // once a backlog as large as this group waits (`pass_turn_if_backlogged`).
        let mut queue = tokio::select! {
            jobs = jobs.clone().lock_owned() => jobs,
            _ = &mut closed => return,
        };
        let first = tokio::select! {
            job = queue.recv() => job,
            _ = &mut closed => return,
        };
        match first {
            Some(job) => group.push(job),
            None => return,
        }
        while group.len() < max_rows {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!("arreglame_db_group_commit_transitions").record(group.len() as f64);
        let conn = match held.as_mut() {
            Some(conn) => conn,
            None => match pool.acquire().await {
                Ok(conn) => held.insert(conn),
                Err(e) => {
                    answer_all_with(group, &e);
                    continue;
                }
            },
        };
        let mut turn = Some(queue);
        if group.len() == 1 {
            let job = group.pop().expect("one job");
            pass_turn_if_backlogged(&mut turn, 1);
            let answer = job.args.query().fetch_optional(&mut **conn).await;
            if answer.as_ref().is_err_and(|e| !keeps_connection(e)) {
                held = None;
            }
            let _ = job.reply.send(answer);
            continue;
        }
        match write_group(conn, &group, &mut turn).await {
            Ok(rows) => {
                for (job, row) in group.into_iter().zip(rows) {
                    let _ = job.reply.send(Ok(row));
                }
            }
            Err(sqlx::Error::Database(e)) => {
                tracing::debug!(target: "Store", error = %e, transitions = group.len(),
                    "group commit refused; writing its transitions one by one");
                metrics::counter!("arreglame_db_group_commit_retried_total").increment(1);
                for job in group {
                    let answer = match held.as_mut() {
                        Some(conn) => job.args.query().fetch_optional(&mut **conn).await,
                        None => job.args.query().fetch_optional(&pool).await,
                    };
                    if answer.as_ref().is_err_and(|e| !keeps_connection(e)) {
                        held = None;
                    }
                    let _ = job.reply.send(answer);
                }
            }
            Err(e) => {
                held = None;
                answer_all_with(group, &e);
            }
        }
    }
}

/// Lets the next writer start now, before this group's commit, once at least as many
/// transitions are waiting as this group holds: its group will be no smaller than this
/// one, so running the two side by side costs no group size and uses a second core for
/// statements. Checked before each statement of the group.
fn pass_turn_if_backlogged<T>(
    turn: &mut Option<OwnedMutexGuard<mpsc::UnboundedReceiver<T>>>,
    group_len: usize,
) {
    if turn.as_ref().is_some_and(|queue| queue.len() >= group_len) {
        *turn = None;
    }
}

/// Whether a connection that returned `error` is still fit for the next group: only when the
/// database itself answered (it refused a statement; the transaction was rolled back).
fn keeps_connection(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(_))
}

/// Every transition of `group` fails with `error` (no connection, or the connection lost,
/// possibly during the commit): each actor is rebuilt from what the database committed.
fn answer_all_with(group: Vec<Job>, error: &sqlx::Error) {
    let message = error.to_string();
    for job in group {
        let _ = job
            .reply
            .send(Err(sqlx::Error::Io(std::io::Error::other(message.clone()))));
    }
}

/// One transaction, then one commit: the transitions of a kind a request's life is made of
/// as one multi-row statement per kind (`transition_batch`), the rare kinds with their own
/// statement, first (they release workers: a cancellation withdraws its offers). A second
/// transition of a request already in a kind's batch (which one actor never sends: it
/// waits for each answer) is written on its own after the batches.
async fn write_group(
    conn: &mut PgConnection,
    group: &[Job],
    turn: &mut Option<OwnedMutexGuard<mpsc::UnboundedReceiver<Job>>>,
) -> Result<Vec<Option<ServiceRequest>>, sqlx::Error> {
    let mut batches: BTreeMap<BatchKind, Vec<usize>> = BTreeMap::new();
    let (mut alone, mut later) = (Vec::new(), Vec::new());
    let mut seen = HashSet::with_capacity(group.len());
    for (at, job) in group.iter().enumerate() {
        match BatchKind::of(&job.args.change) {
            Some(kind) if seen.insert(job.args.id) => batches.entry(kind).or_default().push(at),
            Some(_) => later.push(at),
            None => alone.push(at),
        }
    }
    let mut rows: Vec<Option<ServiceRequest>> = vec![None; group.len()];
    let mut tx = conn.begin().await?;
    for &at in &alone {
        pass_turn_if_backlogged(turn, group.len());
        rows[at] = group[at].args.query().fetch_optional(&mut *tx).await?;
    }
    for (kind, members) in &batches {
        pass_turn_if_backlogged(turn, group.len());
        if let [at] = members.as_slice() {
            rows[*at] = group[*at].args.query().fetch_optional(&mut *tx).await?;
            continue;
        }
        let args: Vec<&TransitionArgs> = members.iter().map(|&at| &group[at].args).collect();
        let answers = transition_batch::write(&mut tx, *kind, &args).await?;
        for (&at, answer) in members.iter().zip(answers) {
            rows[at] = answer;
        }
    }
    for &at in &later {
        pass_turn_if_backlogged(turn, group.len());
        rows[at] = group[at].args.query().fetch_optional(&mut *tx).await?;
    }
    // The next writer may gather and run its group while this commit waits.
    *turn = None;
    tx.commit().await?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The turn is passed only once the waiting transitions would make a group at least as
    /// large as the current one.
    #[tokio::test]
    async fn the_turn_passes_early_only_to_a_backlog_as_large_as_the_group() {
        let (queue, jobs) = mpsc::unbounded_channel::<u32>();
        let jobs = Arc::new(Mutex::new(jobs));
        let mut turn = Some(jobs.clone().lock_owned().await);

        queue.send(1).unwrap();
        pass_turn_if_backlogged(&mut turn, 2);
        assert!(
            turn.is_some() && jobs.try_lock().is_err(),
            "one waiting, group of two"
        );

        queue.send(2).unwrap();
        pass_turn_if_backlogged(&mut turn, 2);
        assert!(
            turn.is_none(),
            "two waiting, group of two: the turn is passed"
        );
        let mut next = jobs.try_lock().expect("the next writer may gather now");
        assert_eq!((next.try_recv(), next.try_recv()), (Ok(1), Ok(2)));
    }
}
