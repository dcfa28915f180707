//! Console staff in the record (migration `0004_console.sql`): users with a role, their
//! server-side sessions and their API tokens.
//!
//! - Passwords are hashed with Argon2id (the `argon2` crate's default parameters) in a
//!   blocking task, never stored or logged in clear.
//! - A session id and an API token are 256 random bits from the OS; only their SHA-256 is
//!   stored, so a copy of the database lets nobody sign in. A session ends after
//!   `idle` without use or `max` after it began, whichever comes first.
//! - [`LOCKOUT_AFTER`] wrong passwords in a row lock an account for [`LOCKOUT_FOR`]; every
//!   login, logout and failed login is in the audit log (`auth.login`, `auth.logout`,
//!   `auth.login_failed`, `auth.locked`) on `user:{name}`.
//! - A token carries a role no higher than its owner's, and dies with the owner's account.

use std::fmt;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sha2::{Digest, Sha256};

use super::{Audit, Record, RecordError, Result, from_us, now_us, with_pool};

/// Consecutive failed logins that lock an account.
pub const LOCKOUT_AFTER: i64 = 5;
/// How long a locked account stays locked.
pub const LOCKOUT_FOR: Duration = Duration::from_secs(15 * 60);

/// What a console user may do. Ordered: each role may do everything the ones before it may.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything, acknowledges alerts.
    Nurse,
    /// A nurse who also edits thresholds.
    Clinician,
    /// A clinician who also manages users and the registry.
    Admin,
}

impl Role {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Nurse => "nurse",
            Role::Clinician => "clinician",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = RecordError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "nurse" => Ok(Role::Nurse),
            "clinician" => Ok(Role::Clinician),
            "admin" => Ok(Role::Admin),
            other => Err(RecordError::Invalid(format!(
                "unknown role `{other}`: expected nurse, clinician or admin"
            ))),
        }
    }
}

/// A console user (never the password hash).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StaffUser {
    /// Row id.
    pub id: i64,
    /// Sign-in name (`a-z 0-9 . _ -`): a staff id, not necessarily a person's name.
    pub username: String,
    /// Role.
    pub role: Role,
    /// When created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    /// When disabled; a disabled user cannot sign in and their sessions and tokens are dead.
    #[serde(with = "time::serde::rfc3339::option")]
    pub disabled_at: Option<time::OffsetDateTime>,
}

/// Who a request is from, once its session or token checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The user.
    pub user_id: i64,
    /// Their name.
    pub username: String,
    /// The role in force for this request (a token's role is capped by its owner's).
    pub role: Role,
    /// How they proved it.
    pub via: AuthVia,
}

/// How a request was authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthVia {
    /// A session cookie; state-changing requests must carry this CSRF token.
    Session {
        /// The session's synchronizer token.
        csrf: String,
    },
    /// A bearer API token (no CSRF: browsers do not send it on their own).
    Token {
        /// The token's label.
        label: String,
    },
}

/// A fresh session: the cookie value (shown once, stored hashed) and its CSRF token.
#[derive(Clone, PartialEq, Eq)]
pub struct NewSession {
    /// The cookie value (64 hex digits).
    pub id: String,
    /// The synchronizer token for forms and `X-CSRF-Token`.
    pub csrf: String,
    /// The user.
    pub user: StaffUser,
}

impl fmt::Debug for NewSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewSession")
            .field("user", &self.user.username)
            .finish_non_exhaustive()
    }
}

/// Why a login was refused. The console says the same to the user for each (no hint which
/// names exist); the audit log says which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginRefused {
    /// Unknown user or wrong password.
    BadCredentials,
    /// Too many failures: locked for a while.
    Locked,
    /// The account is disabled.
    Disabled,
}

/// An API token's metadata (never the token).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ApiToken {
    /// Row id.
    pub id: i64,
    /// Owner.
    pub username: String,
    /// Its name.
    pub label: String,
    /// Role granted (capped by the owner's).
    pub role: Role,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    /// Revoked.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<time::OffsetDateTime>,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    user_id: i64,
    username: String,
    role: String,
    password_hash: String,
    created_at: i64,
    disabled_at: Option<i64>,
    failed_logins: i64,
    locked_until: Option<i64>,
}

const USER_COLUMNS: &str = "user_id, username, role, password_hash, created_at, disabled_at, \
                            failed_logins, locked_until";
const AUDIT_INSERT: &str =
    "INSERT INTO audit_log (at, actor, action, target, reason) VALUES ($1, $2, $3, $4, $5)";

fn user_from_row(r: &UserRow) -> Result<StaffUser> {
    Ok(StaffUser {
        id: r.user_id,
        username: r.username.clone(),
        role: r
            .role
            .parse()
            .map_err(|e| RecordError::corrupt("console_users", e))?,
        created_at: from_us(r.created_at, "console_users")?,
        disabled_at: r
            .disabled_at
            .map(|t| from_us(t, "console_users"))
            .transpose()?,
    })
}

/// 256 random bits as 64 hex digits.
pub(crate) fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| RecordError::Invalid(format!("the OS random source failed: {e}")))?;
    Ok(hex::encode(bytes))
}

/// What is stored for a session id or token.
pub(crate) fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Checks a user name: 1–64 of `a-z 0-9 . _ -`.
pub fn check_username(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(RecordError::Invalid(format!(
            "user name `{}` must be 1–64 of a-z 0-9 . _ -",
            name.chars().take(64).collect::<String>()
        )))
    }
}

/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 10;

fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD || password.len() > 1024 {
        return Err(RecordError::Invalid(format!(
            "the password must be {MIN_PASSWORD} to 1024 characters"
        )));
    }
    Ok(())
}

async fn hash_password(password: &str) -> Result<String> {
    let password = password.to_owned();
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)
        .map_err(|e| RecordError::Invalid(format!("the OS random source failed: {e}")))?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::encode_b64(&salt)
            .map_err(|e| RecordError::Invalid(format!("salt: {e}")))?;
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| RecordError::Invalid(format!("cannot hash the password: {e}")))
    })
    .await
    .map_err(|e| RecordError::Invalid(format!("password hashing task: {e}")))?
}

/// A hash of no password anyone has: verified against when the user does not exist, so an
/// unknown name costs as much time as a wrong password.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
                          2Pn0+5qqnE4pyGwBzKuu2B5o1gpfN0RtLdIQmaEdXkY";

async fn verify_password(hash: String, password: &str) -> bool {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|parsed| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

impl Record {
    /// Creates a console user with `password` (hashed with Argon2id). The change is audited
    /// (`user.create` on `user:{name}`). [`RecordError::Conflict`] if the name is taken.
    pub async fn create_user(
        &self,
        username: &str,
        role: Role,
        password: &str,
        audit: &Audit<'_>,
    ) -> Result<StaffUser> {
        check_username(username)?;
        check_password(password)?;
        let hash = hash_password(password).await?;
        let now = now_us();
        let target = format!("user:{username}");
        let action = format!("user.create({role})");
        let inserted: Option<i64> = with_pool!(self, write, |pool, DB| {
            let mut tx = pool.begin().await?;
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO console_users (username, role, password_hash, created_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (username) DO NOTHING RETURNING user_id",
            )
            .bind(username)
            .bind(role.as_str())
            .bind(hash.as_str())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if id.is_some() {
                sqlx::query(AUDIT_INSERT)
                    .bind(now)
                    .bind(audit.who)
                    .bind(action.as_str())
                    .bind(target.as_str())
                    .bind(audit.why)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            id
        });
        if inserted.is_none() {
            return Err(RecordError::Conflict(format!(
                "user `{username}` already exists"
            )));
        }
        self.user(username).await?.ok_or(RecordError::NotFound {
            what: "user",
            key: username.to_owned(),
        })
    }

    /// One user by name.
    pub async fn user(&self, username: &str) -> Result<Option<StaffUser>> {
        Ok(match self.user_row(username).await? {
            Some(r) => Some(user_from_row(&r)?),
            None => None,
        })
    }

    async fn user_row(&self, username: &str) -> Result<Option<UserRow>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM console_users WHERE username = $1");
        Ok(with_pool!(self, read, |pool, DB| {
            sqlx::query_as(&sql)
                .bind(username)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Every user, by name.
    pub async fn list_users(&self) -> Result<Vec<StaffUser>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM console_users ORDER BY username");
        let rows: Vec<UserRow> = with_pool!(self, read, |pool, DB| {
            sqlx::query_as(&sql).fetch_all(pool).await?
        });
        rows.iter().map(user_from_row).collect()
    }

    /// Disables a user: no more logins, and their sessions end and tokens stop working now.
    /// Audited (`user.disable`).
    pub async fn disable_user(&self, username: &str, audit: &Audit<'_>) -> Result<()> {
        let now = now_us();
        let target = format!("user:{username}");
        let n = with_pool!(self, write, |pool, DB| {
            let mut tx = pool.begin().await?;
            let id: Option<i64> = sqlx::query_scalar(
                "UPDATE console_users SET disabled_at = $2 \
                 WHERE username = $1 AND disabled_at IS NULL RETURNING user_id",
            )
            .bind(username)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(id) = id {
                sqlx::query("DELETE FROM console_sessions WHERE user_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(AUDIT_INSERT)
                    .bind(now)
                    .bind(audit.who)
                    .bind("user.disable")
                    .bind(target.as_str())
                    .bind(audit.why)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            id
        });
        match n {
            Some(_) => Ok(()),
            None => Err(RecordError::NotFound {
                what: "active user",
                key: username.to_owned(),
            }),
        }
    }

    /// Checks a password and, when it is right, opens a session lasting at most `max`.
    /// Success, failure and lock-outs are audited; [`LOCKOUT_AFTER`] failures in a row lock
    /// the account for [`LOCKOUT_FOR`] (the right password is refused while locked).
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        max: Duration,
    ) -> Result<std::result::Result<NewSession, LoginRefused>> {
        let now = now_us();
        // The name goes in the audit log only when it is a well-formed one (no junk).
        let target = match check_username(username) {
            Ok(()) => format!("user:{username}"),
            Err(_) => "user:(malformed name)".to_owned(),
        };
        let row = if check_username(username).is_ok() {
            self.user_row(username).await?
        } else {
            None
        };
        let Some(row) = row else {
            let _ = verify_password(DUMMY_HASH.to_owned(), password).await;
            self.audit_now(&target, "auth.login_failed", "unknown user")
                .await?;
            return Ok(Err(LoginRefused::BadCredentials));
        };
        if row.disabled_at.is_some() {
            self.audit_now(&target, "auth.login_failed", "account disabled")
                .await?;
            return Ok(Err(LoginRefused::Disabled));
        }
        if row.locked_until.is_some_and(|t| t > now) {
            self.audit_now(&target, "auth.login_failed", "account locked")
                .await?;
            return Ok(Err(LoginRefused::Locked));
        }
        if !verify_password(row.password_hash.clone(), password).await {
            let failures = row.failed_logins + 1;
            let lock = (failures >= LOCKOUT_AFTER)
                .then(|| now + i64::try_from(LOCKOUT_FOR.as_micros()).unwrap_or(i64::MAX));
            with_pool!(self, write, |pool, DB| {
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "UPDATE console_users SET failed_logins = $2, locked_until = $3 \
                     WHERE user_id = $1",
                )
                .bind(row.user_id)
                .bind(if lock.is_some() { 0 } else { failures })
                .bind(lock)
                .execute(&mut *tx)
                .await?;
                sqlx::query(AUDIT_INSERT)
                    .bind(now)
                    .bind(username)
                    .bind(if lock.is_some() {
                        "auth.locked"
                    } else {
                        "auth.login_failed"
                    })
                    .bind(target.as_str())
                    .bind(format!("wrong password ({failures} in a row)"))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            });
            return Ok(Err(LoginRefused::BadCredentials));
        }
        let user = user_from_row(&row)?;
        // The session starts now, after the (deliberately slow) password check.
        let now = now_us();
        let id = random_hex()?;
        let csrf = random_hex()?;
        let expires = now + i64::try_from(max.as_micros()).unwrap_or(i64::MAX / 2);
        with_pool!(self, write, |pool, DB| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE console_users SET failed_logins = 0, locked_until = NULL \
                 WHERE user_id = $1",
            )
            .bind(row.user_id)
            .execute(&mut *tx)
            .await?;
            // Expired sessions of anyone are swept here: logins are rare, sessions few.
            sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO console_sessions (session_hash, user_id, csrf_token, created_at, \
                 last_seen_at, expires_at) VALUES ($1, $2, $3, $4, $4, $5)",
            )
            .bind(secret_hash(&id))
            .bind(row.user_id)
            .bind(csrf.as_str())
            .bind(now)
            .bind(expires)
            .execute(&mut *tx)
            .await?;
            sqlx::query(AUDIT_INSERT)
                .bind(now)
                .bind(username)
                .bind("auth.login")
                .bind(target.as_str())
                .bind("signed in to the console")
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(Ok(NewSession { id, csrf, user }))
    }

    async fn audit_now(&self, target: &str, action: &str, why: &str) -> Result<()> {
        self.append_audit(
            &Audit {
                who: "anonymous",
                why,
            },
            action,
            target,
        )
        .await
    }

    /// The user of a session cookie, if the session exists, has been used within `idle` and
    /// is not past its absolute expiry. Using it moves the idle clock (written at most once
    /// a minute, so reads stay reads).
    pub async fn session(&self, id: &str, idle: Duration) -> Result<Option<Principal>> {
        let now = now_us();
        let idle_us = i64::try_from(idle.as_micros()).unwrap_or(i64::MAX / 2);
        let hash = secret_hash(id);
        #[allow(clippy::type_complexity)]
        let row: Option<(i64, String, String, String, i64, i64)> =
            with_pool!(self, read, |pool, DB| {
                sqlx::query_as(
                    "SELECT u.user_id, u.username, u.role, s.csrf_token, s.last_seen_at, \
                     s.expires_at FROM console_sessions s \
                     JOIN console_users u ON u.user_id = s.user_id \
                     WHERE s.session_hash = $1 AND u.disabled_at IS NULL",
                )
                .bind(hash.as_str())
                .fetch_optional(pool)
                .await?
            });
        let Some((user_id, username, role, csrf, last_seen, expires)) = row else {
            return Ok(None);
        };
        if now >= expires || now - last_seen >= idle_us {
            with_pool!(self, write, |pool, DB| {
                sqlx::query("DELETE FROM console_sessions WHERE session_hash = $1")
                    .bind(hash.as_str())
                    .execute(pool)
                    .await?;
            });
            return Ok(None);
        }
        if now - last_seen > 60_000_000.min(idle_us / 4) {
            with_pool!(self, write, |pool, DB| {
                sqlx::query(
                    "UPDATE console_sessions SET last_seen_at = $2 WHERE session_hash = $1",
                )
                .bind(hash.as_str())
                .bind(now)
                .execute(pool)
                .await?;
            });
        }
        Ok(Some(Principal {
            user_id,
            username,
            role: role
                .parse()
                .map_err(|e| RecordError::corrupt("console_users", e))?,
            via: AuthVia::Session { csrf },
        }))
    }

    /// Ends a session (logout); audited when there was one.
    pub async fn end_session(&self, id: &str) -> Result<bool> {
        let hash = secret_hash(id);
        let now = now_us();
        let ended = with_pool!(self, write, |pool, DB| {
            let mut tx = pool.begin().await?;
            let user: Option<String> = sqlx::query_scalar(
                "SELECT u.username FROM console_sessions s JOIN console_users u \
                 ON u.user_id = s.user_id WHERE s.session_hash = $1",
            )
            .bind(hash.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(user) = &user {
                sqlx::query("DELETE FROM console_sessions WHERE session_hash = $1")
                    .bind(hash.as_str())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(AUDIT_INSERT)
                    .bind(now)
                    .bind(user.as_str())
                    .bind("auth.logout")
                    .bind(format!("user:{user}"))
                    .bind("signed out of the console")
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            user.is_some()
        });
        Ok(ended)
    }

    /// Issues an API token for `username` named `label` with `role` (default: the user's;
    /// never above it). Returns the token, which is shown this once and stored hashed.
    /// Audited (`token.create`).
    pub async fn create_token(
        &self,
        username: &str,
        label: &str,
        role: Option<Role>,
        audit: &Audit<'_>,
    ) -> Result<(String, ApiToken)> {
        if label.trim().is_empty() || label.len() > 100 || label.chars().any(char::is_control) {
            return Err(RecordError::Invalid(
                "the token label must be 1–100 characters without control characters".into(),
            ));
        }
        let user = self
            .user(username)
            .await?
            .filter(|u| u.disabled_at.is_none())
            .ok_or(RecordError::NotFound {
                what: "active user",
                key: username.to_owned(),
            })?;
        let role = role.unwrap_or(user.role);
        if role > user.role {
            return Err(RecordError::Invalid(format!(
                "a token cannot have more rights than its owner: {username} is a {}",
                user.role
            )));
        }
        let token = format!("rpm_{}", random_hex()?);
        let now = now_us();
        let target = format!("user:{username}");
        let action = format!("token.create({role})");
        let id: Option<i64> = with_pool!(self, write, |pool, DB| {
            let mut tx = pool.begin().await?;
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO api_tokens (token_hash, user_id, label, role, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, label) DO NOTHING \
                 RETURNING token_id",
            )
            .bind(secret_hash(&token))
            .bind(user.id)
            .bind(label)
            .bind(role.as_str())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if id.is_some() {
                sqlx::query(AUDIT_INSERT)
                    .bind(now)
                    .bind(audit.who)
                    .bind(action.as_str())
                    .bind(target.as_str())
                    .bind(audit.why)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            id
        });
        let Some(id) = id else {
            return Err(RecordError::Conflict(format!(
                "{username} already has a token labelled `{label}`"
            )));
        };
        Ok((
            token,
            ApiToken {
                id,
                username: username.to_owned(),
                label: label.to_owned(),
                role,
                created_at: from_us(now, "api_tokens")?,
                revoked_at: None,
            },
        ))
    }

    /// Revokes a user's token by label. Audited (`token.revoke`).
    pub async fn revoke_token(&self, username: &str, label: &str, audit: &Audit<'_>) -> Result<()> {
        let now = now_us();
        let target = format!("user:{username}");
        let done = with_pool!(self, write, |pool, DB| {
            let mut tx = pool.begin().await?;
            let n = sqlx::query(
                "UPDATE api_tokens SET revoked_at = $3 WHERE label = $2 AND revoked_at IS NULL \
                 AND user_id = (SELECT user_id FROM console_users WHERE username = $1)",
            )
            .bind(username)
            .bind(label)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n > 0 {
                sqlx::query(AUDIT_INSERT)
                    .bind(now)
                    .bind(audit.who)
                    .bind("token.revoke")
                    .bind(target.as_str())
                    .bind(audit.why)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            n
        });
        if done == 0 {
            return Err(RecordError::NotFound {
                what: "token",
                key: format!("{username}/{label}"),
            });
        }
        Ok(())
    }

    /// Every token (metadata only), by user and label.
    pub async fn list_tokens(&self) -> Result<Vec<ApiToken>> {
        #[allow(clippy::type_complexity)]
        let rows: Vec<(i64, String, String, String, i64, Option<i64>)> =
            with_pool!(self, read, |pool, DB| {
                sqlx::query_as(
                    "SELECT t.token_id, u.username, t.label, t.role, t.created_at, t.revoked_at \
                     FROM api_tokens t JOIN console_users u ON u.user_id = t.user_id \
                     ORDER BY u.username, t.label",
                )
                .fetch_all(pool)
                .await?
            });
        rows.into_iter()
            .map(|(id, username, label, role, created, revoked)| {
                Ok(ApiToken {
                    id,
                    username,
                    label,
                    role: role
                        .parse()
                        .map_err(|e| RecordError::corrupt("api_tokens", e))?,
                    created_at: from_us(created, "api_tokens")?,
                    revoked_at: revoked.map(|t| from_us(t, "api_tokens")).transpose()?,
                })
            })
            .collect()
    }

    /// The principal of a bearer token: live token, active owner, role capped by the owner's.
    pub async fn token_principal(&self, token: &str) -> Result<Option<Principal>> {
        let hash = secret_hash(token);
        let row: Option<(i64, String, String, String, String)> =
            with_pool!(self, read, |pool, DB| {
                sqlx::query_as(
                    "SELECT u.user_id, u.username, u.role, t.role, t.label FROM api_tokens t \
                     JOIN console_users u ON u.user_id = t.user_id WHERE t.token_hash = $1 \
                     AND t.revoked_at IS NULL AND u.disabled_at IS NULL",
                )
                .bind(hash.as_str())
                .fetch_optional(pool)
                .await?
            });
        let Some((user_id, username, user_role, token_role, label)) = row else {
            return Ok(None);
        };
        let bad = |e| RecordError::corrupt("api_tokens", e);
        let role = user_role
            .parse::<Role>()
            .map_err(bad)?
            .min(token_role.parse::<Role>().map_err(bad)?);
        Ok(Some(Principal {
            user_id,
            username,
            role,
            via: AuthVia::Token { label },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parse() {
        assert!(Role::Nurse < Role::Clinician && Role::Clinician < Role::Admin);
        for r in [Role::Nurse, Role::Clinician, Role::Admin] {
            assert_eq!(r.as_str().parse::<Role>().expect("parses"), r);
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn user_names_are_checked() {
        assert!(check_username("nurse.day-1").is_ok());
        for bad in ["", "Nurse", "a b", "x\n", &"a".repeat(65)] {
            assert!(check_username(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse battery").await.expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(hash.clone(), "correct horse battery").await);
        assert!(!verify_password(hash, "correct horse battery!").await);
        assert!(
            PasswordHash::new(DUMMY_HASH).is_ok(),
            "the dummy hash parses"
        );
    }
}
