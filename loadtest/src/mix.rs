//! What the load test asks for: the service's endpoints and the mixes that weigh them.

use rand::Rng;
use serde::Serialize;

/// One kind of request the load test sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Endpoint {
    /// `GET /users/{id}`: profile and balance, from a replica.
    GetUser,
    /// `GET /users/{id}/movements?limit=20`: the newest movements, from a replica.
    Movements,
    /// `GET /users?email=`: lookup by the unique email index.
    ByEmail,
    /// `POST /users/{id}/deposit`.
    Deposit,
    /// `POST /transfers` between two random users.
    Transfer,
    /// `PATCH /users/{id}`: a metadata change.
    UpdateProfile,
    /// `GET /users/{id}` carrying the consistency token of this session's last write.
    ReadOwnWrite,
}

impl Endpoint {
    /// The name the report aggregates under.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::GetUser => "GET /users/{id}",
            Endpoint::Movements => "GET /users/{id}/movements",
            Endpoint::ByEmail => "GET /users?email",
            Endpoint::Deposit => "POST /users/{id}/deposit",
            Endpoint::Transfer => "POST /transfers",
            Endpoint::UpdateProfile => "PATCH /users/{id}",
            Endpoint::ReadOwnWrite => "GET /users/{id} +token",
        }
    }

    /// Whether it changes data (goes to the primary).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Endpoint::Deposit | Endpoint::Transfer | Endpoint::UpdateProfile
        )
    }
}

/// A weighted choice of endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mix {
    /// Reads only: profile 60, movements 25, email lookup 15.
    Read,
    /// Mostly reads with some money moving: profile 55, movements 20, email 15, deposit 5,
    /// transfer 5.
    ReadHeavy,
    /// Mostly writes, each session reading its own writes back with the token: deposit 35,
    /// transfer 30, profile change 10, read-own-write 25.
    Write,
}

impl Mix {
    /// Every mix, by its command-line name.
    pub const ALL: [(&'static str, Mix); 3] = [
        ("read", Mix::Read),
        ("read-heavy", Mix::ReadHeavy),
        ("write", Mix::Write),
    ];

    /// The mix named `name`.
    pub fn named(name: &str) -> Option<Mix> {
        Mix::ALL.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
    }

    /// The endpoints with their weights (summing to 100).
    pub fn weights(self) -> &'static [(Endpoint, u32)] {
        match self {
            Mix::Read => &[
                (Endpoint::GetUser, 60),
                (Endpoint::Movements, 25),
                (Endpoint::ByEmail, 15),
            ],
            Mix::ReadHeavy => &[
                (Endpoint::GetUser, 55),
                (Endpoint::Movements, 20),
                (Endpoint::ByEmail, 15),
                (Endpoint::Deposit, 5),
                (Endpoint::Transfer, 5),
            ],
            Mix::Write => &[
                (Endpoint::Deposit, 35),
                (Endpoint::Transfer, 30),
                (Endpoint::UpdateProfile, 10),
                (Endpoint::ReadOwnWrite, 25),
            ],
        }
    }

    /// Draws one endpoint by weight.
    pub fn pick(self, rng: &mut impl Rng) -> Endpoint {
        let weights = self.weights();
        let total: u32 = weights.iter().map(|(_, w)| w).sum();
        let mut roll = rng.gen_range(0..total);
        for &(endpoint, weight) in weights {
            if roll < weight {
                return endpoint;
            }
            roll -= weight;
        }
        unreachable!("roll < total")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn weights_sum_to_100_and_picks_follow_them() {
        for (_, mix) in Mix::ALL {
            assert_eq!(mix.weights().iter().map(|(_, w)| w).sum::<u32>(), 100);
            let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
            let picks = 100_000;
            for &(endpoint, weight) in mix.weights() {
                let mut rng2 = rng.clone();
                let hits = (0..picks)
                    .filter(|_| mix.pick(&mut rng2) == endpoint)
                    .count();
                let expected = picks * weight as usize / 100;
                assert!(
                    hits.abs_diff(expected) < picks / 100,
                    "{mix:?} {endpoint:?}: {hits} of {picks}, expected about {expected}"
                );
            }
            let _ = mix.pick(&mut rng);
        }
        assert_eq!(Mix::named("read-heavy"), Some(Mix::ReadHeavy));
        assert_eq!(Mix::named("reads"), None);
    }
}
