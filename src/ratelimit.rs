//! Rate limits per operation class (seed 002: usage recordings 60 a minute, queries 100, admin
//! changes 30), keyed by the token's subject within its organization, with governor's keyed GCRA.
//! The seed's numbers are the defaults for people's tokens; SERVICE tokens and the platform team are
//! unlimited unless configured. State lives in memory on each replica: behind N replicas with no
//! sticky routing, a caller may get up to N times the configured rate (README).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::{Rate, Settings};
use crate::domain::{Role, Viewer};

/// What an operation does, for its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// recordUsage, recordUsageBatch, reverseUsage.
    Record,
    /// Queries and subscriptions (counted on subscribe).
    Query,
    /// Every other mutation: plan changes, credits, corrections, resets.
    Admin,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Record => "usage recordings",
            Class::Query => "queries",
            Class::Admin => "changes",
        }
    }

    fn index(self) -> usize {
        match self {
            Class::Record => 0,
            Class::Query => 1,
            Class::Admin => 2,
        }
    }
}

/// Who calls, for its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    People,
    Service,
    Platform,
}

impl Audience {
    pub fn of(viewer: &Viewer) -> Self {
        if viewer.platform {
            Audience::Platform
        } else if viewer.role == Some(Role::Service) {
            Audience::Service
        } else {
            Audience::People
        }
    }

    fn index(self) -> usize {
        match self {
            Audience::People => 0,
            Audience::Service => 1,
            Audience::Platform => 2,
        }
    }
}

type Keyed = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;

/// The limiters of every audience and class (None: unlimited).
pub struct RateLimits {
    limiters: [[Option<Keyed>; 3]; 3],
    clock: DefaultClock,
}

/// A refusal: how long until the operation would be allowed.
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    pub class: Class,
    pub retry_after: Duration,
    /// The operation alone asks for more than the limit's burst: split it.
    pub too_many: bool,
}

impl Refused {
    /// Whole seconds to wait, at least one (the `Retry-After` header and `extensions.retryAfter`).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0)
    }

    pub fn message(&self) -> String {
        if self.too_many {
            return format!(
                "rate limit exceeded for {}: this request alone holds more than the limit allows at once; send fewer",
                self.class.as_str()
            );
        }
        format!(
            "rate limit exceeded for {}: try again in {} s",
            self.class.as_str(),
            self.retry_after_secs().max(1)
        )
    }
}

fn quota(rate: Rate) -> Option<Quota> {
    match rate {
        Rate::Unlimited => None,
        Rate::Limited {
            count,
            period,
            burst,
        } => {
            let per = period / count.max(1);
            let quota = Quota::with_period(per.max(Duration::from_nanos(1)))?;
            Some(quota.allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN)))
        }
    }
}

impl RateLimits {
    pub fn from_settings(s: &Settings) -> Self {
        let make = |rate: Rate| {
            if s.rate_limits {
                quota(rate).map(RateLimiter::keyed)
            } else {
                None
            }
        };
        RateLimits {
            limiters: [
                [
                    make(s.rate_people_record),
                    make(s.rate_people_query),
                    make(s.rate_people_admin),
                ],
                [
                    make(s.rate_service_record),
                    make(s.rate_service_query),
                    make(s.rate_service_admin),
                ],
                [
                    make(s.rate_platform_record),
                    make(s.rate_platform_query),
                    make(s.rate_platform_admin),
                ],
            ],
            clock: DefaultClock::default(),
        }
    }

    /// Counts what an operation costs (`n` of each class) for `viewer`; refused when any class is
    /// past its limit, or asks for more at once than its burst allows (the classes counted before
    /// it stay counted, as an attempt).
    pub fn check(&self, viewer: &Viewer, costs: &[(Class, u32)]) -> Result<(), Refused> {
        for &(class, n) in costs {
            let Some(limiter) = &self.limiters[Audience::of(viewer).index()][class.index()] else {
                continue;
            };
            let key = match viewer.org_id {
                Some(org) if !viewer.platform => format!("{}:{}", org.0, viewer.sub),
                _ => viewer.sub.clone(),
            };
            let Some(n) = NonZeroU32::new(n) else {
                continue;
            };
            match limiter.check_key_n(&key, n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    return Err(Refused {
                        class,
                        retry_after: not_until.wait_time_from(self.clock.now()),
                        too_many: false,
                    });
                }
                // More at once than the burst: no wait makes it fit.
                Err(_) => {
                    return Err(Refused {
                        class,
                        retry_after: Duration::from_secs(60),
                        too_many: true,
                    });
                }
            }
        }
        Ok(())
    }

    /// Forgets callers whose state no longer matters (run every minute), so memory follows the
    /// active callers rather than every caller ever seen.
    pub fn retain_recent(&self) {
        for limiter in self.limiters.iter().flatten().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrganizationId;

    fn viewer(role: Role, sub: &str) -> Viewer {
        Viewer {
            sub: sub.into(),
            org_id: Some(OrganizationId(uuid::Uuid::nil())),
            role: Some(role),
            platform: false,
        }
    }

    #[test]
    fn people_get_the_seed_limits_and_services_none() {
        let settings = Settings::parse_from_env_and(&[]).unwrap();
        let limits = RateLimits::from_settings(&settings);
        let admin = viewer(Role::Admin, "alice");
        for _ in 0..30 {
            limits.check(&admin, &[(Class::Admin, 1)]).unwrap();
        }
        let refused = limits.check(&admin, &[(Class::Admin, 1)]).unwrap_err();
        assert_eq!(refused.class, Class::Admin);
        assert!((1..=2).contains(&refused.retry_after_secs()), "{refused:?}");
        // Aliases and batch items count one each; more than the burst at once never fits.
        let fresh = viewer(Role::Admin, "carol");
        limits.check(&fresh, &[(Class::Record, 60)]).unwrap();
        assert!(limits.check(&fresh, &[(Class::Record, 1)]).is_err());
        let greedy = viewer(Role::Admin, "dave");
        assert!(
            limits
                .check(&greedy, &[(Class::Record, 61)])
                .unwrap_err()
                .too_many
        );
        // Another subject of the same organization has its own budget.
        limits
            .check(&viewer(Role::Admin, "bob"), &[(Class::Admin, 1)])
            .unwrap();
        let service = viewer(Role::Service, "backend");
        for _ in 0..1000 {
            limits.check(&service, &[(Class::Record, 1)]).unwrap();
        }
    }

    #[test]
    fn off_means_unlimited() {
        let settings = Settings::parse_from_env_and(&["--rate-limits", "off"]).unwrap();
        let limits = RateLimits::from_settings(&settings);
        for _ in 0..500 {
            limits
                .check(&viewer(Role::Viewer, "v"), &[(Class::Query, 1)])
                .unwrap();
        }
    }
}
