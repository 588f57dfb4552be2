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

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex, OnceCell};

use std::collections::{BTreeMap, HashSet};

use super::{
    transition::TransitionArgs,
    transition_batch::{self, BatchKind},
    ServiceRequest,
};

/// Writers running groups at once (each holds one pooled connection while it writes).
const WRITERS: usize = 4;

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
    queue: Arc<OnceCell<mpsc::UnboundedSender<Job>>>,
}

impl GroupCommit {
    pub(super) fn new(max_rows: usize) -> GroupCommit {
        GroupCommit {
            max_rows: max_rows.max(1),
            queue: Arc::default(),
        }
    }

    pub(super) fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// Writes one transition, alone or in a group; returns its row (`None`: its guard did
    /// not match) once the commit that carries it is done.
    pub(super) async fn write(&self, pool: &PgPool, args: TransitionArgs) -> Answer {
        if self.max_rows == 1 {
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
        for _ in 0..WRITERS {
            tokio::spawn(writer(pool.clone(), jobs.clone(), self.max_rows));
        }
        queue
    }
}

/// Takes the first queued transition and whatever else is queued behind it, writes them,
/// answers each, and starts again.
async fn writer(pool: PgPool, jobs: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>, max_rows: usize) {
    loop {
        let mut group = Vec::new();
        {
            let mut jobs = jobs.lock().await;
            match jobs.recv().await {
                Some(job) => group.push(job),
                None => return,
            }
            while group.len() < max_rows {
                match jobs.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
        }
        metrics::histogram!("arreglame_db_group_commit_transitions").record(group.len() as f64);
        if group.len() == 1 {
            let job = group.pop().expect("one job");
            let answer = job.args.query().fetch_optional(&pool).await;
            let _ = job.reply.send(answer);
            continue;
        }
        match write_group(&pool, &group).await {
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
                    let answer = job.args.query().fetch_optional(&pool).await;
                    let _ = job.reply.send(answer);
                }
            }
            Err(e) => {
                let message = e.to_string();
                for job in group {
                    let _ = job
                        .reply
                        .send(Err(sqlx::Error::Io(std::io::Error::other(message.clone()))));
                }
            }
        }
    }
}

/// One transaction, then one commit: the transitions of a kind a request's life is made of
/// as one multi-row statement per kind (`transition_batch`), the rare kinds with their own
/// statement, first (they release workers: a cancellation withdraws its offers). A second
/// transition of a request already in a kind's batch (which one actor never sends: it
/// waits for each answer) is written on its own after the batches.
async fn write_group(
    pool: &PgPool,
    group: &[Job],
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
    let mut tx = pool.begin().await?;
    for &at in &alone {
        rows[at] = group[at].args.query().fetch_optional(&mut *tx).await?;
    }
    for (kind, members) in &batches {
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
        rows[at] = group[at].args.query().fetch_optional(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(rows)
}
