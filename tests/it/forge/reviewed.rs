//! The documented CI flow through the binary: `plan --comment` on the pull request, then
//! `apply` after the merge, which knows only the sticky comment. Its reviewed-plan record
//! lets a re-run finish what a partial failure left, and lets each shard of a fan-out apply
//! its hosts, while a host whose plan changed since review is still refused, and a marker
//! pasted by someone else is never trusted.

use nixprox::forge::ForgeKind;
use serde_json::Value;

use super::cli::{capture_new_comment, ci_env, homelab, mount_plan_statuses, pull_request, run_in_ci};
use super::spec::Op;
use super::{Fake, MALLORY, ME, both_forges};
use crate::support::cli::Run;
use crate::support::fakepve::FakePve;
use crate::support::nix::Fixture;

/// The merge commit of the `push` event fixtures.
const MERGE: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
/// The hosts of the example cluster that apply can finish without SSH (see apply_cli.rs).
const HOSTS: &str = "matrix,db,old-wiki";

struct Lab {
    fake: Fake,
    fixture: Fixture,
    pve: FakePve,
    dir: tempfile::TempDir,
    pr: u64,
    head: String,
}

impl Lab {
    async fn start(kind: ForgeKind) -> Lab {
        let fake = Fake::start(kind).await;
        let (fixture, pve, dir) = homelab();
        let (pr, head) = pull_request(kind);
        Lab { fake, fixture, pve, dir, pr, head }
    }

    /// `nixprox plan --comment` on the pull request; returns the comment it posted.
    async fn plan_on_the_pull_request(&self) -> String {
        let fake = &self.fake;
        fake.mount_user(ME).await;
        fake.mount_comments(self.pr, Vec::new()).await;
        let posted = capture_new_comment(fake, self.pr, "<!-- nixprox:reviewed ").await;
        mount_plan_statuses(fake, &self.head, ME).await;
        let env = ci_env(fake, "pull_request", "pull_request_opened.json", self.dir.path());
        let run = run_in_ci(vec!["plan".into(), "--comment".into()], env, &self.fixture, &self.pve).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        fake.next_run().await;
        posted.lock().expect("lock").clone()
    }

    /// `nixprox apply --hosts …` on the push of the merge commit, with `comments` on the
    /// merged pull request.
    async fn apply_after_merge(&self, comments: Vec<Value>, args: &[&str]) -> Run {
        let fake = &self.fake;
        fake.mount_user(ME).await;
        fake.req("POST", &fake.repo_path(&format!("statuses/{MERGE}")))
            .respond_with(fake.answer(Op::CreateStatus, 201, fake.status("pending", "nixprox/apply", ME)))
            .mount(&fake.server)
            .await;
        fake.mount_commit_pull(MERGE, Some(fake.pull(self.pr, MERGE, &self.head))).await;
        fake.mount_comments(self.pr, comments).await;
        let env = ci_env(fake, "push", "push.json", self.dir.path());
        let mut argv = vec!["apply".to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        let run = run_in_ci(argv, env, &self.fixture, &self.pve).await;
        fake.next_run().await;
        run
    }

    fn ours(&self, body: &str) -> Value {
        self.fake.comment(9001, ME, self.pr, body)
    }
}

fn plan_id_of(comment: &str) -> String {
    let start = comment.find("plan_id=").expect("marker") + "plan_id=".len();
    comment[start..].split_whitespace().next().expect("id").to_string()
}

/// One host fails half-way; the re-run of the merge workflow, which knows only the comment,
/// finishes the rest without `--allow-new-plan`. With the plan id alone it would be refused.
async fn a_partial_failure_is_finished_by_a_rerun(kind: ForgeKind) {
    let lab = Lab::start(kind).await;
    let comment = lab.plan_on_the_pull_request().await;
    assert!(comment.trim_end().ends_with("-->"), "the record closes the comment:\n{comment}");

    // `db`'s config write is refused once: `matrix` is created and `old-wiki` destroyed.
    lab.pve.fail(
        "POST",
        "/nodes/pve1/qemu/102/config",
        403,
        "Permission check failed (/vms/102, VM.Config.CPU)",
        Some(1),
    );
    let first = lab.apply_after_merge(vec![lab.ours(&comment)], &["--hosts", HOSTS]).await;
    assert_eq!(first.code, 3, "one host failed:\n{}\n{}", first.stdout, first.stderr);
    assert!(first.stdout.contains("db"), "{}", first.stdout);

    // The plan changed (matrix exists, old-wiki is gone): the id alone no longer matches.
    let env = ci_env(&lab.fake, "push", "push.json", lab.dir.path());
    let argv = ["apply", "--hosts", HOSTS, "--plan-id", &plan_id_of(&comment)].map(String::from).to_vec();
    let by_id = run_in_ci(argv, env, &lab.fixture, &lab.pve).await;
    assert_eq!(by_id.code, 4, "{}", by_id.stderr);
    assert!(by_id.stderr.contains("the plan changed since it was reviewed"), "{}", by_id.stderr);

    let rerun = lab.apply_after_merge(vec![lab.ours(&comment)], &["--hosts", HOSTS]).await;
    assert_eq!(rerun.code, 0, "the re-run finishes:\n{}\n{}", rerun.stdout, rerun.stderr);
    assert!(rerun.stderr.contains("host `matrix`: resuming unfinished work"), "{}", rerun.stderr);
    let db = lab.pve.vm(102);
    assert_eq!(db["pending"]["cores"].to_string().trim_matches('"'), "4", "db got its update: {db:#}");
}

/// `plan --format matrix` fan-out: each shard applies its hosts against the reviewed plan of
/// the whole pull request.
async fn each_matrix_shard_is_accepted(kind: ForgeKind) {
    let lab = Lab::start(kind).await;
    let comment = lab.plan_on_the_pull_request().await;
    for shard in ["matrix", "db,old-wiki"] {
        let run = lab.apply_after_merge(vec![lab.ours(&comment)], &["--hosts", shard]).await;
        assert_eq!(run.code, 0, "shard `{shard}`:\n{}\n{}", run.stdout, run.stderr);
        assert!(!run.stderr.contains("--allow-new-plan"), "{}", run.stderr);
    }
}

/// The flake changed after the review (another merge moved `main`): `db` would now do
/// something nobody reviewed, and is refused with what it would do. A newer plan comment
/// pasted by someone else changes nothing.
async fn a_host_changed_since_review_is_refused_and_pasted_markers_are_ignored(kind: ForgeKind) {
    let lab = Lab::start(kind).await;
    let reviewed = lab.plan_on_the_pull_request().await;
    let flake = lab.fixture.dir.path().join("flake.nix");
    let text = std::fs::read_to_string(&flake).expect("flake");
    let changed =
        text.replacen("id = 102;\n                cores = 4;", "id = 102;\n                cores = 6;", 1);
    assert_ne!(text, changed, "the fixture declares db's cores where this test expects");
    std::fs::write(&flake, changed).expect("write flake");
    // Mallory pastes what a plan of the changed flake would post, as the newest comment.
    let forged = lab.plan_on_the_pull_request().await;
    assert_ne!(plan_id_of(&forged), plan_id_of(&reviewed));
    let comments = vec![lab.ours(&reviewed), lab.fake.comment(9002, MALLORY, lab.pr, &forged)];

    let run = lab.apply_after_merge(comments, &["--hosts", "db"]).await;
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(run.stderr.contains("the plan changed since it was reviewed"), "{}", run.stderr);
    assert!(run.stderr.contains("host `db`: reviewed other actions (digest `"), "{}", run.stderr);
    assert!(run.stderr.contains("now update_vm(cores 2→6"), "the delta: {}", run.stderr);
    let db = lab.pve.vm(102);
    assert_eq!(db["config"]["cores"].to_string().trim_matches('"'), "2", "nothing was changed");
    assert!(db["pending"]["cores"].is_null(), "{db:#}");

    // Mallory's alone is no reviewed plan at all.
    let run = lab
        .apply_after_merge(vec![lab.fake.comment(9002, MALLORY, lab.pr, &forged)], &["--hosts", "db"])
        .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("no reviewed plan for commit"), "{}", run.stderr);
}

/// A commit pushed straight to the default branch has no pull request, so no reviewed plan:
/// apply refuses before it touches anything and names the way in, a pull request (issue 22).
async fn a_push_without_a_pull_request_names_the_way_in(kind: ForgeKind) {
    let lab = Lab::start(kind).await;
    let fake = &lab.fake;
    fake.mount_user(ME).await;
    fake.req("POST", &fake.repo_path(&format!("statuses/{MERGE}")))
        .respond_with(fake.answer(Op::CreateStatus, 201, fake.status("pending", "nixprox/apply", ME)))
        .mount(&fake.server)
        .await;
    fake.mount_commit_pull(MERGE, None).await;
    let env = ci_env(fake, "push", "push.json", lab.dir.path());
    lab.pve.requests(true);
    let run = run_in_ci(vec!["apply".to_string()], env, &lab.fixture, &lab.pve).await;
    fake.next_run().await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    let error = run.stderr.lines().find(|l| l.starts_with("error:")).expect("an error line");
    let key = error.split("comment for `").nth(1).and_then(|r| r.split('`').next()).expect("the key");
    assert_eq!(
        error,
        format!(
            "error: no reviewed plan for commit `{MERGE}`: no merged pull request with a nixprox plan comment for `{key}` (a commit pushed straight to the branch has none); changes reach apply through a pull request, whose plan comment is the review: open one for this change and merge it, or review a plan yourself on the runner and apply it with `--reviewed-plan FILE` (docs/troubleshooting.md#no-reviewed-plan)"
        )
    );
    let writes: Vec<(String, String)> =
        lab.pve.requests(false).into_iter().filter(|(m, _)| m != "GET").collect();
    assert!(writes.is_empty(), "nothing was changed: {writes:?}");
}

/// The visible text of the comment is rewritten, its first line (the marker) and last line
/// (the record) kept: "nothing is destroyed". Apply refuses it, whole or as one shard, and
/// the orphan the record would destroy is still there.
async fn an_edited_comment_text_is_refused(kind: ForgeKind) {
    let lab = Lab::start(kind).await;
    let comment = lab.plan_on_the_pull_request().await;
    assert!(comment.contains("`old-wiki`: `destroy_vm` — **will run**"), "{comment}");
    let (marker, rest) = comment.split_once('\n').expect("lines");
    let record = &rest[rest.rfind("<!-- nixprox:reviewed ").expect("record")..];
    let edited = format!(
        "{marker}\n### nixprox plan\n\n**0 to create, 1 to update, 0 to switch, 0 to destroy**\n\nOnly `db` gets more cores.\n{record}"
    );
    for args in [&[][..], &["--hosts", "old-wiki"][..]] {
        let run = lab.apply_after_merge(vec![lab.ours(&edited)], args).await;
        assert_eq!(run.code, 4, "{args:?}:\n{}\n{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains(&format!("error: the plan comment on #{} (", lab.pr))
                && run.stderr.contains("#issuecomment-9001) does not show the plan this apply would run: "),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("nothing was applied (was the comment edited after the plan?"),
            "{}",
            run.stderr
        );
        assert_eq!(lab.pve.vm(150)["name"], "old-wiki", "{args:?}: the orphan is still there");
    }
    let run = lab.apply_after_merge(vec![lab.ours(&edited)], &[]).await;
    assert!(
        run.stderr.contains("line 3 of its text reads `**0 to create, 1 to update, 0 to switch, 0 to destroy**` where nixprox renders `> [!CAUTION]`"),
        "the first line that differs: {}",
        run.stderr
    );
    // The comment as nixprox wrote it (commit, time, link to the run, NixOS changes: all that
    // apply renders otherwise) is accepted for the whole plan, whose id is the reviewed one.
    // (New VMs get no address in the fake: give up on them at once.)
    let settings = lab.fixture.dir.path().join("nixprox.yaml");
    let text = std::fs::read_to_string(&settings).expect("settings");
    std::fs::write(&settings, format!("{text}apply:\n  address_timeout: 1\n")).expect("write settings");
    let run = lab.apply_after_merge(vec![lab.ours(&comment)], &[]).await;
    assert!(!run.stderr.contains("does not show the plan"), "{}", run.stderr);
    assert!(!run.stderr.contains("the plan changed since it was reviewed"), "{}", run.stderr);
    assert_ne!(run.code, 4, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.starts_with(&format!("apply {}: ", plan_id_of(&comment))),
        "the reviewed plan itself, compared line by line: {}",
        run.stdout
    );
    assert!(
        lab.pve.try_command(serde_json::json!({"cmd": "vm", "vmid": 150})).is_err(),
        "destroyed as reviewed"
    );
}

/// The reviewed plan destroys orphan `old-wiki`, VM 150. Before the merge, 150 is removed and
/// a VM 159 named `old-wiki` (restored from a backup: tag, notes, other cores) appears. Apply
/// refuses to destroy it, with and without `--hosts`, naming both VMs.
async fn a_vm_swapped_under_a_reviewed_destroy_is_not_destroyed(kind: ForgeKind) {
    let lab = Lab::start(kind).await;
    let comment = lab.plan_on_the_pull_request().await;
    let mut guest = lab.pve.vm(150);
    lab.pve.command(serde_json::json!({"cmd": "remove_vm", "vmid": 150}));
    guest["vmid"] = 159.into();
    guest["config"]["cores"] = 8.into();
    guest["config"]["scsi0"] = "local-lvm:vm-159-disk-0,size=20G".into();
    lab.pve.command(serde_json::json!({"cmd": "add_vm", "guest": guest}));
    for args in [&["--hosts", "old-wiki"][..], &[][..]] {
        let run = lab.apply_after_merge(vec![lab.ours(&comment)], args).await;
        assert_eq!(run.code, 4, "{args:?}:\n{}\n{}", run.stdout, run.stderr);
        assert!(run.stderr.contains("the plan changed since it was reviewed"), "{}", run.stderr);
        assert!(run.stderr.contains("  host `old-wiki`: reviewed other actions (digest `"), "{}", run.stderr);
        assert!(
            run.stderr.contains(" on VM `pve1/150`; now destroy_vm(vm old-wiki→∅"),
            "{args:?}: the delta names both VMs: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains(
                " on VM `pve1/159` (destroy_vm of VM 159 was never reviewed: the reviewer saw VM 150)"
            ),
            "{}",
            run.stderr
        );
        assert_eq!(lab.pve.vm(159)["name"], "old-wiki", "{args:?}: VM 159 is still there");
    }
}

both_forges!(
    a_push_without_a_pull_request_names_the_way_in,
    an_edited_comment_text_is_refused,
    a_vm_swapped_under_a_reviewed_destroy_is_not_destroyed,
    a_partial_failure_is_finished_by_a_rerun,
    each_matrix_shard_is_accepted,
    a_host_changed_since_review_is_refused_and_pasted_markers_are_ignored,
);
