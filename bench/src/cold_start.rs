//! Cold starts: how long a new service process takes from `exec` to SERVING
//! (on the system's PostgreSQL, with the JWKS fetched over loopback), and how
//! long its first call takes. What Cloud Run's scale-from-zero costs a user.

use std::time::{Duration, Instant};

use casebook::pb::casebook::cases::v1::{GetCaseRequest, case_service_client::CaseServiceClient};
use serde::Serialize;

use crate::system::Launcher;

/// One start.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ColdStart {
    /// `exec` to the first SERVING health answer, ms.
    pub to_serving_ms: f64,
    /// The first authenticated GetCase after that, ms.
    pub first_call_ms: f64,
}

/// Starts case-svc `starts` times, one at a time, and times each; `case` is
/// a case `token`'s owner can read.
pub async fn measure(
    launcher: &Launcher,
    starts: usize,
    case: &str,
    token: &str,
) -> anyhow::Result<Vec<ColdStart>> {
    let mut measured = Vec::new();
    for _ in 0..starts {
        let started = Instant::now();
        let service = launcher.spawn("case-svc", "CASE_SVC_ADDR", &[])?;
        // Polled every millisecond: a refused connection costs microseconds.
        while casebook::server::check_health(service.addr, false)
            .await
            .is_err()
        {
            if started.elapsed() > Duration::from_secs(30) {
                anyhow::bail!("case-svc did not serve within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let to_serving = started.elapsed();
        let first = Instant::now();
        let mut client = CaseServiceClient::connect(format!("http://{}", service.addr)).await?;
        let mut request = tonic::Request::new(GetCaseRequest {
            name: case.to_owned(),
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        client.get_case(request).await?;
        measured.push(ColdStart {
            to_serving_ms: to_serving.as_secs_f64() * 1e3,
            first_call_ms: first.elapsed().as_secs_f64() * 1e3,
        });
    }
    Ok(measured)
}

/// Median and max of `values`.
pub fn median_and_max(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let median = values.get(values.len() / 2).copied().unwrap_or(f64::NAN);
    (median, values.last().copied().unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_max_of_an_odd_and_an_empty_list() {
        assert_eq!(median_and_max(&mut [3.0, 1.0, 2.0]), (2.0, 3.0));
        let (median, max) = median_and_max(&mut []);
        assert!(median.is_nan() && max.is_nan());
    }
}
