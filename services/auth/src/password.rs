//! Password hashing: argon2id on dedicated threads at the lowest normal
//! priority (nice 19 on Linux). They use every idle cycle, while RPC threads
//! win the CPU whenever they wake, so a login storm neither stalls the async
//! workers nor stretches other RPCs' tail latency much.
//!
//! Logins have a queue of their own that the threads always serve first, and
//! new passwords (sign-up, accepted invitations) a short one: a flood of
//! sign-ups is refused as busy rather than making logins wait behind it.
//!
//! Each hashing thread keeps argon2's 19 MiB of working memory for its
//! whole life. Allocated per hash, freed blocks that size made glibc raise
//! its mmap threshold and keep them resident (measured: 50 failed logins
//! took a release server from 13 to 241 MiB); with the threshold pinned,
//! every hash faulted its pages in anew (about 40% slower per hash).
//!
//! Not `SCHED_IDLE`: measured here (bench/login_load.sh, kernel 6.18 in a
//! VM), idle-class hashers made woken RPC threads wait a whole 4 ms tick
//! about twice as often as nice-19 ones, for the same login throughput.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tonic_types::FieldViolation;

/// OWASP's argon2id minimum: 19 MiB, 2 passes, 1 lane.
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;
/// Long enough for any passphrase; bounds the work an attacker can ask for.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The parameters every hash is made with; public for the login benchmark,
/// which compares the login rate with the raw rate of these.
pub fn params() -> Params {
    Params::new(MEMORY_KIB, PASSES, LANES, None).expect("constant parameters are valid")
}

fn argon2() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params())
}

thread_local! {
    /// Argon2's working memory, kept by each hashing thread (see above);
    /// `None` on every other thread.
    static WORKING_MEMORY: RefCell<Option<Vec<Block>>> = const { RefCell::new(None) };
}

/// Runs `work` with `blocks` blocks of working memory: a hashing thread's
/// own, or, on any other thread and for parameters larger than today's
/// (never written by this code), a buffer freed afterwards.
fn with_working_memory<T>(blocks: usize, work: impl FnOnce(&mut [Block]) -> T) -> T {
    let kept = WORKING_MEMORY.with_borrow(Option::is_some);
    if !kept || blocks > params().block_count() {
        return work(&mut vec![Block::default(); blocks]);
    }
    WORKING_MEMORY.with_borrow_mut(|memory| {
        let memory = memory.get_or_insert_with(Vec::new);
        if memory.len() < blocks {
            memory.resize(params().block_count(), Block::default());
        }
        work(&mut memory[..blocks])
    })
}

/// Argon2 output for `password` under `argon2`'s parameters.
fn raw_hash(
    argon2: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    output_len: usize,
) -> Result<Output, HashError> {
    let failed = |e: argon2::Error| HashError::Failed(e.to_string());
    let mut out = [0u8; Output::MAX_LENGTH];
    let out = out
        .get_mut(..output_len)
        .ok_or_else(|| HashError::Failed("output length".into()))?;
    let blocks = argon2.params().block_count();
    with_working_memory(blocks, |memory| {
        argon2.hash_password_into_with_memory(password, salt, out, memory)
    })
    .map_err(failed)?;
    Output::new(out).map_err(|e| HashError::Failed(e.to_string()))
}

/// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`) of today's
/// parameters, with a fresh 128-bit salt.
fn hash_new(password: &[u8]) -> Result<String, HashError> {
    let failed = |e: &dyn std::fmt::Display| HashError::Failed(e.to_string());
    let salt_bytes: [u8; 16] = rand::random();
    let output = raw_hash(&argon2(), password, &salt_bytes, Params::DEFAULT_OUTPUT_LEN)?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params()).map_err(|e| failed(&e))?,
        salt: Some(Salt::new(&salt_bytes).map_err(|e| failed(&e))?),
        hash: Some(output),
    };
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string `stored`, under whatever
/// argon2 parameters it records.
fn verify_stored(password: &[u8], stored: &str) -> bool {
    let Ok(hash) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let algorithm = Algorithm::try_from(hash.algorithm.as_str());
    let version = Version::try_from(hash.version.unwrap_or(Version::V0x13.into()));
    let params = Params::try_from(&hash);
    let (Ok(algorithm), Ok(version), Ok(params)) = (algorithm, version, params) else {
        return false;
    };
    let argon2 = Argon2::new(algorithm, version, params);
    // `Output` compares in constant time.
    raw_hash(&argon2, password, salt, expected.len()).is_ok_and(|computed| computed == *expected)
}

/// Every way `password` breaks the password policy (at least 8 characters
/// with a digit, a lower and an upper case letter), at once.
pub fn policy_violations(field: &str, password: &str) -> Vec<FieldViolation> {
    let mut violations = Vec::new();
    let mut violate = |description: &str| violations.push(FieldViolation::new(field, description));
    if password.chars().count() < 8 {
        violate("must be at least 8 characters");
    }
    if password.len() > MAX_PASSWORD_BYTES {
        violate("must be at most 1024 bytes");
    }
    if !password.chars().any(|c| c.is_ascii_digit()) {
        violate("must contain a digit");
    }
    if !password.chars().any(char::is_lowercase) {
        violate("must contain a lower case letter");
    }
    if !password.chars().any(char::is_uppercase) {
        violate("must contain an upper case letter");
    }
    violations
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every hashing thread is busy and the queue is full: a login storm.
    #[error("too many logins in progress")]
    Busy,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

type Job = Box<dyn FnOnce() + Send>;

/// Which queue a hash waits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashPriority {
    /// Someone logging in (also a re-hash at login): served first.
    Login,
    /// A new password: sign-up, an accepted invitation.
    NewPassword,
}

/// Login hashes waiting for a thread, at most; beyond that logins are
/// refused rather than queued without bound.
const LOGIN_QUEUE: usize = 1024;
/// New-password hashes waiting, at most: about a second of work on two
/// cores; more sign-ups at once are refused as busy.
const NEW_PASSWORD_QUEUE: usize = 64;

#[derive(Default)]
struct Queues {
    login: VecDeque<Job>,
    new_password: VecDeque<Job>,
    closed: bool,
}

struct Pool {
    queues: Mutex<Queues>,
    ready: Condvar,
    login_capacity: usize,
    new_password_capacity: usize,
}

impl Pool {
    fn submit(&self, priority: HashPriority, job: Job) -> Result<(), HashError> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if queues.closed {
            return Err(HashError::Failed("hashing threads stopped".into()));
        }
        let (queue, capacity) = match priority {
            HashPriority::Login => (&mut queues.login, self.login_capacity),
            HashPriority::NewPassword => (&mut queues.new_password, self.new_password_capacity),
        };
        if queue.len() >= capacity {
            return Err(HashError::Busy);
        }
        queue.push_back(job);
        drop(queues);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job, logins first; `None` once closed.
    fn next(&self) -> Option<Job> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if queues.closed {
                return None;
            }
            if let Some(job) = queues.login.pop_front() {
                return Some(job);
            }
            if let Some(job) = queues.new_password.pop_front() {
                return Some(job);
            }
            queues = self.ready.wait(queues).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn close(&self) {
        self.queues.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.ready.notify_all();
    }
}

fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
            set_thread_priority_and_policy, thread_native_id,
        };
        // `Min` under the normal policy is nice 19.
        let normal = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other);
        if let Err(error) =
            set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, normal)
        {
            tracing::warn!(
                ?error,
                "cannot lower the password-hashing threads' priority"
            );
        }
    }
}

fn hashing_thread(pool: Arc<Pool>) {
    lower_priority();
    WORKING_MEMORY.set(Some(Vec::new()));
    while let Some(job) = pool.next() {
        job();
    }
}

pub struct Passwords {
    pool: Arc<Pool>,
    /// Verified against when the email is unknown, so both answers cost the same.
    dummy_hash: Arc<str>,
}

impl Drop for Passwords {
    fn drop(&mut self) {
        self.pool.close();
    }
}

impl Passwords {
    /// `parallelism` hashing threads (one per core is the useful most).
    pub fn new(parallelism: usize) -> Result<Self, HashError> {
        Self::with_queues(parallelism, LOGIN_QUEUE, NEW_PASSWORD_QUEUE)
    }

    /// At most `login_queue` login hashes and `new_password_queue` others
    /// wait for a thread; more are refused as busy.
    pub fn with_queues(
        parallelism: usize,
        login_queue: usize,
        new_password_queue: usize,
    ) -> Result<Self, HashError> {
        let dummy_hash = hash_new(b"dummy password for unknown accounts")?;
        let pool = Arc::new(Pool {
            queues: Mutex::new(Queues::default()),
            ready: Condvar::new(),
            login_capacity: login_queue,
            new_password_capacity: new_password_queue,
        });
        for index in 0..parallelism.max(1) {
            let pool = pool.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || hashing_thread(pool))
                .map_err(|e| HashError::Failed(e.to_string()))?;
        }
        Ok(Passwords {
            pool,
            dummy_hash: dummy_hash.into(),
        })
    }

    async fn on_hashing_thread<T: Send + 'static>(
        &self,
        priority: HashPriority,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // A caller that went away (a cancelled call) needs no hash.
            if !done.is_closed() {
                let _ = done.send(work());
            }
        });
        self.pool.submit(priority, job)?;
        result
            .await
            .map_err(|_| HashError::Failed("hashing thread failed".into()))
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`) with a fresh salt.
    pub async fn hash(
        &self,
        password: String,
        priority: HashPriority,
    ) -> Result<String, HashError> {
        self.on_hashing_thread(priority, move || hash_new(password.as_bytes()))
            .await?
    }

    /// Whether `password` matches `stored`; with `None` (unknown account) a
    /// dummy hash is checked so the time is the same, and the answer is no.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, HashError> {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let matches = self
            .on_hashing_thread(HashPriority::Login, move || {
                verify_stored(password.as_bytes(), &stored)
            })
            .await?;
        Ok(known && matches)
    }

    /// Whether `stored` was made with other parameters than today's (an
    /// older algorithm, less memory or fewer passes) and should be replaced
    /// by a fresh hash the next time its password is known.
    pub fn needs_rehash(&self, stored: &str) -> bool {
        phc_prefix(stored) != phc_prefix(&self.dummy_hash)
    }
}

/// `$argon2id$v=19$m=19456,t=2,p=1`: everything before the salt.
fn phc_prefix(hash: &str) -> &str {
    hash.match_indices('$')
        .nth(3)
        .map_or(hash, |(at, _)| &hash[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_violation_is_listed_at_once() {
        let fields: Vec<String> = policy_violations("password", "short")
            .iter()
            .map(|v| v.description.clone())
            .collect();
        assert_eq!(
            fields,
            [
                "must be at least 8 characters",
                "must contain a digit",
                "must contain an upper case letter"
            ]
        );
        assert!(policy_violations("password", "Correct-Horse-9").is_empty());
        let long = format!("Aa1{}", "x".repeat(61));
        assert_eq!(long.len(), 64);
        assert!(
            policy_violations("password", &long).is_empty(),
            "64 characters are fine"
        );
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_as_busy_not_queued_without_bound() {
        let passwords = Arc::new(Passwords::with_queues(1, 1, 1).unwrap());
        let hashes: Vec<_> = (0..6)
            .map(|_| {
                let passwords = passwords.clone();
                tokio::spawn(async move {
                    passwords
                        .hash("Correct-Horse-9".into(), HashPriority::NewPassword)
                        .await
                })
            })
            .collect();
        let mut busy = 0;
        for hash in hashes {
            match hash.await.unwrap() {
                Ok(_) => {}
                Err(HashError::Busy) => busy += 1,
                Err(other) => panic!("{other}"),
            }
        }
        assert!(busy >= 4, "one running, one queued, the rest busy: {busy}");
        let status = trellis_runtime::status_of(crate::AuthServiceError::Hash(HashError::Busy));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn logins_are_neither_refused_nor_queued_behind_new_passwords() {
        let passwords = Arc::new(Passwords::with_queues(1, 4, 2).unwrap());
        let finished = Arc::new(Mutex::new(Vec::new()));
        let mut new_passwords = Vec::new();
        for _ in 0..8 {
            let (passwords, finished) = (passwords.clone(), finished.clone());
            new_passwords.push(tokio::spawn(async move {
                let hashed = passwords
                    .hash("Correct-Horse-9".into(), HashPriority::NewPassword)
                    .await;
                if hashed.is_ok() {
                    finished.lock().unwrap().push("new password");
                }
                hashed
            }));
        }
        // Until the new-password queue is full (and refusing).
        let mut refused = 0;
        while refused == 0 {
            tokio::task::yield_now().await;
            let (done, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut new_passwords)
                .into_iter()
                .partition(|task| task.is_finished());
            new_passwords = pending;
            for task in done {
                if matches!(task.await.unwrap(), Err(HashError::Busy)) {
                    refused += 1;
                }
            }
        }
        let matched = passwords
            .verify("Correct-Horse-9".into(), None)
            .await
            .expect("a login is not refused while new passwords fill their queue");
        assert!(!matched);
        finished.lock().unwrap().push("login");
        for task in new_passwords {
            let _ = task.await.unwrap();
        }
        let order = finished.lock().unwrap().clone();
        assert_eq!(
            order.last(),
            Some(&"new password"),
            "the login went ahead of queued new passwords: {order:?}"
        );
    }

    #[test]
    fn hashes_agree_with_the_argon2_crates_own_hasher_and_verifier() {
        use argon2::{PasswordHasher, PasswordVerifier};
        let ours = hash_new(b"Correct-Horse-9").unwrap();
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            argon2()
                .verify_password(b"Correct-Horse-9", &parsed)
                .is_ok()
        );
        assert!(
            argon2()
                .verify_password(b"Correct-Horse-8", &parsed)
                .is_err()
        );
        let theirs = argon2()
            .hash_password(b"Correct-Horse-9")
            .unwrap()
            .to_string();
        assert!(verify_stored(b"Correct-Horse-9", &theirs));
        assert!(!verify_stored(b"Correct-Horse-8", &theirs));
        assert_ne!(
            hash_new(b"Correct-Horse-9").unwrap(),
            ours,
            "a fresh salt each time"
        );
        for broken in [
            "",
            "not a hash",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
            "$scrypt$ln=15,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        ] {
            assert!(!verify_stored(b"Correct-Horse-9", broken), "{broken:?}");
        }
    }

    #[tokio::test]
    async fn hashes_made_with_older_parameters_are_flagged_for_rehash() {
        let passwords = Passwords::new(1).unwrap();
        let current = passwords
            .hash("Correct-Horse-9".into(), HashPriority::NewPassword)
            .await
            .unwrap();
        assert!(!passwords.needs_rehash(&current));
        use argon2::PasswordHasher;
        let weaker = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8 * 1024, 1, 1, None).unwrap(),
        )
        .hash_password(b"Correct-Horse-9")
        .unwrap()
        .to_string();
        assert!(weaker.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"));
        assert!(passwords.needs_rehash(&weaker));
        assert!(
            passwords
                .verify("Correct-Horse-9".into(), Some(weaker))
                .await
                .unwrap(),
            "still verifies"
        );
    }

    #[tokio::test]
    async fn hashes_are_argon2id_phc_strings_that_verify_without_truncation() {
        let passwords = Passwords::new(2).unwrap();
        let long = format!("Aa1{}", "y".repeat(197));
        let hash = passwords
            .hash(long.clone(), HashPriority::NewPassword)
            .await
            .unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            passwords
                .verify(long.clone(), Some(hash.clone()))
                .await
                .unwrap()
        );
        // A change past any plausible truncation point is noticed.
        let mut altered = long.clone();
        altered.push('z');
        assert!(!passwords.verify(altered, Some(hash.clone())).await.unwrap());
        assert!(
            !passwords.verify(long, None).await.unwrap(),
            "unknown accounts never match"
        );
    }
}
