//! Leader election on a coordination.k8s.io Lease, so that only one replica reconciles.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// This replica's view of the lease.
pub struct Leadership {
    leader: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

/// Lease duration and renewal grace, in whole seconds: `duration` at least 2 s, grace a third of it.
pub fn lease_timing(duration: Duration) -> (u64, u64) {
    let secs = duration.as_secs().max(2);
    (secs, (secs / 3).max(1))
}

impl Leadership {
    /// Joins the election for `name` in `namespace` as `identity` (creating the Lease if missing).
    pub async fn join(
        client: Client,
        name: &str,
        namespace: &str,
        identity: &str,
        duration: Duration,
    ) -> Result<Self> {
        let (secs, grace) = lease_timing(duration);
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(secs)
            .with_grace(grace)
            .build()
            .await
            .map_err(|e| Error::Lease(e.to_string()))?;
        let (leader, task) = manager.watch().await;
        Ok(Self { leader, task })
    }

    /// Waits until this replica leads. Errors when the election task ended.
    pub async fn acquired(&mut self) -> Result<()> {
        self.leader
            .wait_for(|leads| *leads)
            .await
            .map(|_| ())
            .map_err(|_| Error::Lease("the lease manager stopped".into()))
    }

    /// Resolves when this replica no longer leads.
    pub async fn lost(&mut self) {
        let _ = self.leader.wait_for(|leads| !*leads).await;
    }

    /// Gives the lease up (so another replica takes over at once) and waits up to `timeout` for it.
    pub async fn release(self, timeout: Duration) {
        let Self { leader, task } = self;
        drop(leader);
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(Ok(_))) => tracing::info!("released the leader lease"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "could not release the leader lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "lease task failed"),
            Err(_) => tracing::warn!("timed out releasing the leader lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_is_a_third_and_never_zero() {
        assert_eq!(lease_timing(Duration::from_secs(15)), (15, 5));
        assert_eq!(lease_timing(Duration::from_secs(2)), (2, 1));
        assert_eq!(lease_timing(Duration::from_millis(100)), (2, 1));
    }
}
