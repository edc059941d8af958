//! Who the token writes as, and which comments and issues are therefore ours.
//!
//! Only what the token's own account wrote is ever edited or trusted (anyone can paste a
//! marker into a comment). Finding that account differs by token:
//!
//! - `--bot-login` names it: nothing is asked.
//! - A personal token, and Forgejo's automatic Actions token (the system user
//!   `forgejo-actions`, id -2), can ask `GET /user`.
//! - A GitHub installation token (the Actions `GITHUB_TOKEN`, or a GitHub App's token) gets 403
//!   there, and `GET /app` needs the app's JWT. What it *can* see is what it writes: the
//!   `creator` of a commit status and the `user` of a comment it posts are its bot account
//!   (`<app-slug>[bot]`), so a run learns its identity from its first write. Before that,
//!   nixprox accepts the marker items of one app bot (`performed_via_github_app.slug`, an
//!   account no person can sign up as); items of several apps need `--bot-login`.

use std::sync::Mutex;

use super::ForgeError;

/// An account on the forge. Ids are signed 64-bit: Forgejo's system users are negative
/// (`Ghost` -1 for deleted accounts, `forgejo-actions` -2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub login: String,
    /// The GitHub App this bot account acts for (its slug), when the account is one.
    pub app: Option<String>,
}

impl User {
    /// The author of an item whose `user` is null: matches no one.
    pub(crate) fn unknown() -> User {
        User { id: 0, login: String::new(), app: None }
    }

    /// A GitHub account: `<slug>[bot]` logins belong to apps (no person can register a login
    /// with brackets); `performed_via_github_app`, when the answer has it, must agree.
    pub(crate) fn github(id: i64, login: String, via_app: Option<&str>) -> User {
        let from_login = login.strip_suffix("[bot]").filter(|slug| !slug.is_empty()).map(str::to_string);
        let app = match (from_login, via_app) {
            (Some(slug), Some(via)) if slug.eq_ignore_ascii_case(via) => Some(slug),
            (Some(_), Some(_)) => None,
            (from_login, None) => from_login,
            (None, Some(_)) => None,
        };
        User { id, login, app }
    }
}

/// Who the token writes as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Me {
    /// Known: from `--bot-login` (no id), `GET /user`, or this run's own writes.
    Known { id: Option<i64>, login: String },
    /// A GitHub installation token whose app is not known yet.
    SomeApp,
}

impl Me {
    /// Whether `author` is this account: by id when both are known, else by login.
    pub fn is(&self, author: &User) -> bool {
        match self {
            Me::Known { id: Some(id), .. } if author.id != 0 => *id == author.id,
            Me::Known { login, .. } => !login.is_empty() && author.login.eq_ignore_ascii_case(login),
            Me::SomeApp => false,
        }
    }

    /// The login, for messages.
    pub fn describe(&self) -> String {
        match self {
            Me::Known { login, .. } => format!("`{login}`"),
            Me::SomeApp => "a GitHub App's installation token".into(),
        }
    }
}

/// The identity found for one client, learned at most once per run and upgraded when a write
/// reveals it.
#[derive(Debug, Default)]
pub(crate) struct IdentityCache {
    me: Mutex<Option<Me>>,
}

impl IdentityCache {
    pub(crate) fn get(&self) -> Option<Me> {
        self.me.lock().map(|me| me.clone()).unwrap_or(None)
    }

    pub(crate) fn set(&self, me: Me) {
        if let Ok(mut slot) = self.me.lock() {
            *slot = Some(me);
        }
    }

    /// Records the author of something this token just wrote, when the identity was not
    /// known from `--bot-login` or `GET /user`.
    pub(crate) fn learn(&self, author: &User) {
        if author.login.is_empty() {
            return;
        }
        if let Ok(mut slot) = self.me.lock()
            && matches!(*slot, None | Some(Me::SomeApp))
        {
            tracing::info!("the forge token writes as `{}`", author.login);
            *slot = Some(Me::Known { id: Some(author.id), login: author.login.clone() });
        }
    }
}

/// Picks our items among `items` (all carrying our marker). With [`Me::SomeApp`], the items of
/// one app bot are ours; items of several apps cannot be told apart.
pub(crate) fn ours<'a, T>(
    me: &Me,
    items: &'a [T],
    author: impl Fn(&T) -> &User,
    what: &str,
) -> Result<Vec<&'a T>, ForgeError> {
    if !matches!(me, Me::SomeApp) {
        return Ok(items.iter().filter(|item| me.is(author(item))).collect());
    }
    let mut apps: Vec<&str> = items.iter().filter_map(|item| author(item).app.as_deref()).collect();
    apps.sort_unstable();
    apps.dedup();
    match apps.as_slice() {
        [] => Ok(Vec::new()),
        [app] => {
            tracing::info!(
                "recognised the {what} of the GitHub App `{app}` as nixprox's (set `--bot-login {app}[bot]`, action input `bot-login`, to make this explicit)"
            );
            Ok(items.iter().filter(|item| author(item).app.as_deref() == Some(*app)).collect())
        }
        several => Err(ForgeError::Env(format!(
            "cannot tell which {what} nixprox wrote: the token cannot read its own login (`GET /user` answers 403 to an installation token) and {} GitHub Apps wrote one ({}); set `--bot-login <slug>[bot]` (action input `bot-login`) to the login of the app whose token nixprox uses",
            several.len(),
            several.iter().map(|a| format!("`{a}[bot]`")).collect::<Vec<_>>().join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: i64, login: &str) -> User {
        User { id, login: login.into(), app: None }
    }

    #[test]
    fn matches_by_id_when_known_else_by_login() {
        let actions = Me::Known { id: Some(-2), login: "forgejo-actions".into() };
        assert!(actions.is(&user(-2, "forgejo-actions")));
        assert!(!actions.is(&user(-1, "Ghost")));
        assert!(!actions.is(&user(7, "forgejo-actions")), "same login, other account");
        let named = Me::Known { id: None, login: "nixprox[bot]".into() };
        assert!(named.is(&user(99, "NixProx[bot]")));
        assert!(!named.is(&User::unknown()));
        assert!(!Me::SomeApp.is(&user(1, "x[bot]")));
    }

    #[test]
    fn app_accounts_are_recognised_by_their_login() {
        assert_eq!(User::github(1, "nixprox[bot]".into(), Some("nixprox")).app.as_deref(), Some("nixprox"));
        assert_eq!(User::github(1, "nixprox[bot]".into(), None).app.as_deref(), Some("nixprox"));
        assert_eq!(User::github(1, "mallory".into(), Some("nixprox")).app, None);
        assert_eq!(User::github(1, "other[bot]".into(), Some("nixprox")).app, None);
        assert_eq!(User::github(1, "[bot]".into(), None).app, None);
    }

    #[test]
    fn one_app_is_ours_several_need_a_login() {
        let items = vec![
            User::github(1, "nixprox[bot]".into(), Some("nixprox")),
            User::github(2, "mallory".into(), None),
        ];
        let found = ours(&Me::SomeApp, &items, |u| u, "plan comment").expect("one app");
        assert_eq!(found.len(), 1);
        let mut two = items.clone();
        two.push(User::github(3, "renovate[bot]".into(), Some("renovate")));
        let err = ours(&Me::SomeApp, &two, |u| u, "plan comment").expect_err("two apps");
        assert!(err.to_string().contains("`nixprox[bot]`, `renovate[bot]`"), "{err}");
        assert!(err.to_string().contains("--bot-login"), "{err}");
    }

    #[test]
    fn writes_teach_the_identity_once() {
        let cache = IdentityCache::default();
        cache.set(Me::SomeApp);
        cache.learn(&User::github(5, "nixprox[bot]".into(), None));
        assert_eq!(cache.get(), Some(Me::Known { id: Some(5), login: "nixprox[bot]".into() }));
        cache.learn(&user(6, "other"));
        assert_eq!(cache.get(), Some(Me::Known { id: Some(5), login: "nixprox[bot]".into() }));
    }
}
