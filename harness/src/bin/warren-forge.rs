//! `warren-forge`: what a hostile job runs to publish a forged result
//! straight to the broker (harness/tests/isolation.rs). It has whatever the
//! job could find: a broker URL (the local broker's default account), the
//! prefix, and a job's id, repository and commit (shown by the dispatcher's
//! API and pages). It has no job's result key, so its result has no proof.
//!
//! usage: warren-forge URL PREFIX JOB_ID ATTEMPT REPO SHA

use std::process::ExitCode;
use warren_common::ids::JobId;
use warren_common::messages::JobStatus;
use warren_common::topology::Queue;
use warren_harness::broker::TestBroker;
use warren_harness::builders;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, prefix, job_id, attempt, repo, sha] = args.as_slice() else {
        eprintln!("usage: warren-forge URL PREFIX JOB_ID ATTEMPT REPO SHA");
        return ExitCode::from(2);
    };
    let (Ok(job_id), Ok(attempt)) = (job_id.parse::<JobId>(), attempt.parse::<u32>()) else {
        eprintln!("warren-forge: bad job id or attempt");
        return ExitCode::from(2);
    };
    let mut result = builders::result(repo, sha)
        .worker("forger")
        .status(JobStatus::Passed)
        .output("all tests passed (forged)\n")
        .build();
    result.job_id = job_id;
    result.attempt = attempt;
    let broker = TestBroker::with_prefix_on(prefix, url);
    let session =
        match warren_common::session::Session::connect(&broker.config, "warren-forge", "forger")
            .await
        {
            Ok(session) => session,
            Err(error) => {
                println!("forge: cannot reach the broker: {error}");
                return ExitCode::FAILURE;
            }
        };
    match session
        .publish(Queue::Results, &result, result.envelope())
        .await
    {
        Ok(()) => {
            println!("forge: published a passed result for job {job_id}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("forge: publish refused: {error}");
            ExitCode::FAILURE
        }
    }
}
