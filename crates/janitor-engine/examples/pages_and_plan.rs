//! The engine API as a front end uses it, and nothing more: list orphans page by page (what
//! the HTTP server serves and the Python package returns), preview a cleanup (the dry run is a
//! plan's preview), then run it: take the lock, plan under it, apply.
//!
//! ```text
//! cargo run -p janitor-engine --example pages_and_plan            # list and preview
//! cargo run -p janitor-engine --example pages_and_plan -- --apply # and clean up
//! ```
//!
//! It reads the CLI's configuration (`CELERY_JANITOR_CONFIG`, `REDIS_URL`, `DATABASE_URL`,
//! `./celery-janitor.toml`). `cargo test` runs it against a private Redis holding captured
//! Celery state (the test at the end), so it can't rot.

use janitor_config::{Discovery, Flags, Settings};
use janitor_engine::{EngineError, Janitor, ListOptions, PlanOptions, RunCtx, State};

/// What one run of the example saw and did.
#[derive(Debug, Default)]
struct Summary {
    pages: usize,
    orphans_listed: usize,
    orphans_planned: u64,
    removed: Option<u64>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let apply = std::env::args().any(|a| a == "--apply");
    let get_env = |k: &str| std::env::var(k).ok();
    let settings =
        janitor_config::resolve_with(&Flags::default(), &get_env, &Discovery::standard(&get_env))?;
    let summary = run(settings, apply, 50).await?;
    println!("{summary:?}");
    Ok(())
}

async fn run(settings: Settings, apply: bool, page_size: usize) -> Result<Summary, EngineError> {
    let janitor = Janitor::connect(settings).await?;
    let cx = RunCtx::quiet();
    let mut summary = Summary::default();

    // Orphans, a page at a time: each page hands back the cursor of the next.
    let mut options = ListOptions {
        states: vec![State::Orphaned],
        limit: Some(page_size),
        ..ListOptions::default()
    };
    loop {
        let page = janitor.list(&options, &cx).await?;
        summary.pages += 1;
        summary.orphans_listed += page.rows.len();
        for row in &page.rows {
            println!("{}", serde_json::to_string(row).expect("rows serialize"));
        }
        match page.next_cursor {
            Some(next) => options.cursor = Some(next),
            None => break,
        }
    }

    // The dry run: a plan, previewed. Nothing is locked or changed.
    let plan = janitor.plan(&PlanOptions::orphans(), &cx).await?;
    summary.orphans_planned = plan.preview().orphans.removed.total();

    // The real run: the lock first, then a plan made under it, then apply (which always ends
    // the run: audit event, run record, lock released).
    if apply {
        let run = janitor.begin_run(&PlanOptions::orphans(), false).await?;
        let plan = match run.plan(&cx).await {
            Ok(plan) => plan,
            Err(e) => return Err(run.fail(e, &cx).await),
        };
        let report = run.apply(plan, &cx).await?;
        summary.removed = Some(report.orphans.removed.total());
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use janitor_testkit::fixtures::{scenario, Capture, Dump};
    use janitor_testkit::redis_server::TestRedis;
    use janitor_testkit::sqlite_owners;

    /// Captured Celery 5.7 state (queues and priority sub-lists) with `app.add(2, …)` and
    /// `app.add(3, …)` live, every other first argument a deleted row.
    #[tokio::test]
    async fn the_example_runs_against_real_celery_state() {
        let (_, path) = scenario("A")
            .into_iter()
            .find(|(c, _)| *c == Capture::Celery57Same)
            .expect("capture has scenario A");
        let redis = TestRedis::start().await;
        redis.load(&Dump::load(&path)).await;
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite_owners::create(dir.path()).await;
        let section = format!("url = \"{}\"", redis.url());
        let config = sqlite_owners::config(&section, &db, dir.path(), "");
        let settings = || {
            janitor_config::resolve_text(&config, &janitor_config::Flags::default(), &|_| None)
                .unwrap()
        };

        let first = super::run(settings(), true, 2).await.unwrap();
        assert!(first.orphans_listed > 2, "{first:?}");
        assert!(first.pages >= first.orphans_listed.div_ceil(2), "{first:?}");
        assert_eq!(
            first.orphans_planned, first.orphans_listed as u64,
            "{first:?}"
        );
        assert_eq!(first.removed, Some(first.orphans_planned), "{first:?}");

        let second = super::run(settings(), false, 2).await.unwrap();
        assert_eq!(
            (second.orphans_listed, second.orphans_planned),
            (0, 0),
            "{second:?}"
        );
    }
}
