//! Every route cuirass answers, in one table: the dashboard and the API
//! dispatch on the [`Route`] it gives, the log streamer and the listing
//! pager find their requests by it, and `/metrics` labels requests with
//! its pattern (never the raw path, which a client could make unique per
//! request).  Adding a route is one row here and the arms the compiler
//! then asks for.

use crate::http::Request;

/// A route of the HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Index,
    Jobset,
    Badge,
    Evaluation,
    BuildDetails,
    BuildLog,
    LogOfItem,
    Search,
    Metrics,
    Machines,
    ApiMachines,
    Jobsets,
    Specifications,
    BuildOfDerivation,
    Build,
    LatestBuilds,
    Queue,
    ApiEvaluations,
    ApiEvaluation,
    Jobs,
    JobsHistory,
    Output,
    SearchLatest,
    SearchLatestOfType,
    /// A build product's file.
    Download,
    /// A build's earlier runs (`BuildAttempts`), as JSON.
    BuildAttempts,
    /// The log of a build's earlier run.
    AttemptLog,
    /// The dashboard's log-in form (GET) and log-in (POST).
    Login,
    Logout,
    /// Today's Cuirass's trigger, open to anyone but rate-limited.
    HookEvaluate,
    /// Signed push webhooks, by forge.
    PushGitHub,
    PushGitea,
    PushGitLab,
    // The operators' actions: POST only, with a token or a session.
    RestartBuild,
    CancelBuild,
    CancelEvaluation,
    RestartEvaluation,
    RetryEvaluation,
    AddSpec,
    EditSpec,
    TriggerSpec,
    DeactivateSpec,
    ReactivateSpec,
    DeleteSpec,
}

/// The table: a pattern's segments are literals, `:name` (any one
/// segment) or `:name.drv` (one segment ending in `.drv`).  The first
/// pattern that matches wins, so the `.drv` form comes before `/build/:id`.
pub const ROUTES: &[(&str, Route)] = &[
    ("/", Route::Index),
    ("/jobset/:name", Route::Jobset),
    ("/jobset/:name/badge.svg", Route::Badge),
    ("/eval/:id", Route::Evaluation),
    ("/build/:derivation.drv", Route::BuildOfDerivation),
    ("/build/:id", Route::Build),
    ("/build/:id/details", Route::BuildDetails),
    ("/build/:id/log/raw", Route::BuildLog),
    ("/log/:item", Route::LogOfItem),
    ("/search", Route::Search),
    ("/metrics", Route::Metrics),
    ("/machines", Route::Machines),
    ("/api/machines", Route::ApiMachines),
    ("/jobsets", Route::Jobsets),
    ("/specifications", Route::Specifications),
    ("/api/latestbuilds", Route::LatestBuilds),
    ("/api/queue", Route::Queue),
    ("/api/evaluations", Route::ApiEvaluations),
    ("/api/evaluation", Route::ApiEvaluation),
    ("/api/jobs", Route::Jobs),
    ("/api/jobs/history", Route::JobsHistory),
    ("/output/:item", Route::Output),
    ("/search/latest", Route::SearchLatest),
    ("/search/latest/:type", Route::SearchLatestOfType),
    ("/download/:id", Route::Download),
    ("/build/:id/attempts", Route::BuildAttempts),
    ("/build/:id/attempt/:n/log/raw", Route::AttemptLog),
    ("/login", Route::Login),
    ("/logout", Route::Logout),
    ("/jobset/:name/hook/evaluate", Route::HookEvaluate),
    ("/api/push-github", Route::PushGitHub),
    ("/api/push-gitea", Route::PushGitea),
    ("/api/push-gitlab", Route::PushGitLab),
    ("/admin/build/:id/restart", Route::RestartBuild),
    ("/admin/build/:id/cancel", Route::CancelBuild),
    ("/admin/evaluation/:id/cancel", Route::CancelEvaluation),
    ("/admin/evaluation/:id/restart", Route::RestartEvaluation),
    ("/admin/evaluation/:id/retry", Route::RetryEvaluation),
    ("/admin/specification/add", Route::AddSpec),
    ("/admin/specification/:name/edit", Route::EditSpec),
    ("/admin/specification/:name/trigger", Route::TriggerSpec),
    (
        "/admin/specification/:name/deactivate",
        Route::DeactivateSpec,
    ),
    (
        "/admin/specification/:name/reactivate",
        Route::ReactivateSpec,
    ),
    ("/admin/specification/:name/delete", Route::DeleteSpec),
];

/// The methods a route answers.  Nothing answered to GET changes
/// anything; everything that changes something is POST.
pub fn methods(route: Route) -> &'static str {
    match route {
        Route::Login => "GET, HEAD, POST",
        r if is_action(r) || is_trigger(r) || r == Route::Logout => "POST",
        _ => "GET, HEAD",
    }
}

/// The operators' actions: a valid token or session, or nothing.
pub fn is_action(route: Route) -> bool {
    matches!(
        route,
        Route::RestartBuild
            | Route::CancelBuild
            | Route::CancelEvaluation
            | Route::RestartEvaluation
            | Route::RetryEvaluation
            | Route::AddSpec
            | Route::EditSpec
            | Route::TriggerSpec
            | Route::DeactivateSpec
            | Route::ReactivateSpec
            | Route::DeleteSpec
    )
}

/// Triggers from outside: the open hook and the signed webhooks.
pub fn is_trigger(route: Route) -> bool {
    matches!(
        route,
        Route::HookEvaluate | Route::PushGitHub | Route::PushGitea | Route::PushGitLab
    )
}

/// The pattern `/metrics` counts requests that matched no route under.
pub const OTHER: &str = "other";

/// A matched request: its route, its pattern, and the segments the
/// pattern's `:name` parts captured, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched<'r> {
    pub route: Route,
    pub pattern: &'static str,
    pub captures: Vec<&'r str>,
}

impl Matched<'_> {
    /// The `n`th capture (a route's pattern says how many there are).
    pub fn arg(&self, n: usize) -> &str {
        self.captures.get(n).copied().unwrap_or("")
    }
}

/// The route `segments` (the path, split and decoded) take, if any.
pub fn find(segments: &[String]) -> Option<Matched<'_>> {
    ROUTES.iter().find_map(|&(pattern, route)| {
        let parts: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty()).collect();
        if parts.len() != segments.len() {
            return None;
        }
        let mut captures = Vec::new();
        for (part, seg) in parts.iter().zip(segments) {
            match part.strip_prefix(':') {
                Some(name) if name.ends_with(".drv") && !seg.ends_with(".drv") => return None,
                Some(_) => captures.push(seg.as_str()),
                None if part == seg => {}
                None => return None,
            }
        }
        Some(Matched {
            route,
            pattern,
            captures,
        })
    })
}

/// The route of a request, if any.
pub fn of(req: &Request) -> Option<Matched<'_>> {
    find(&req.segments)
}

/// The pattern of the route a request took, for `/metrics`.
pub fn pattern(req: &Request) -> &'static str {
    of(req).map_or(OTHER, |m| m.pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(path: &str) -> Vec<String> {
        path.split('/')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    #[test]
    fn each_pattern_matches_its_own_shape_and_captures_its_names() {
        for &(pattern, route) in ROUTES {
            let path = pattern
                .replace(":derivation.drv", "abc-hello.drv")
                .replace(':', "x-");
            let segments = segs(&path);
            let m = find(&segments).unwrap_or_else(|| panic!("{pattern}"));
            assert_eq!((m.route, m.pattern), (route, pattern), "{path}");
            assert_eq!(m.captures.len(), pattern.matches(':').count(), "{pattern}");
        }
    }

    #[test]
    fn derivations_literals_and_lengths_are_told_apart() {
        let drv = segs("/build/abc-hello.drv");
        let m = find(&drv).unwrap();
        assert_eq!(
            (m.route, m.arg(0)),
            (Route::BuildOfDerivation, "abc-hello.drv")
        );
        let id = segs("/build/42");
        let m = find(&id).unwrap();
        assert_eq!((m.route, m.arg(0)), (Route::Build, "42"));
        assert_eq!(
            find(&segs("/build/42/log/raw")).unwrap().route,
            Route::BuildLog
        );
        assert_eq!(find(&segs("/build/42/log")), None);
        assert_eq!(find(&segs("/api/nope")), None);
        assert_eq!(
            find(&segs("/api/jobs/history")).unwrap().route,
            Route::JobsHistory
        );
        assert_eq!(find(&segs("/")).unwrap().route, Route::Index);
    }

    #[test]
    fn patterns_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for &(pattern, route) in ROUTES {
            assert!(seen.insert(pattern), "{pattern}");
            assert!(seen.insert(format!("{route:?}").leak()), "{route:?}");
        }
    }
}
