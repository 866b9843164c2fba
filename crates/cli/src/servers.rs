//! The one table of servers this binary can start. A new server is one
//! line in it: its flags, tables and wiring live in its own crate, behind
//! [`trellis_runtime::Server`].

use std::net::SocketAddr;

use trellis_runtime::{ConfigError, JwtArgs, Server, ServerContext, ServiceSet, SetupError};
use trellis_store::ServiceMigrations;

/// Generates [`ServiceName`] (what `trellis serve` takes) and [`ServerArgs`]
/// (every server's own flags) from the table below, and dispatches to each
/// server's [`Server`] impl by name.
macro_rules! servers {
    ($( $field:ident: $variant:ident => $server:ty ),+ $(,)?) => {
        /// A server `trellis serve` can start.
        #[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ServiceName {
            $( $variant ),+
        }

        impl ServiceName {
            /// Every server, in the order `up` starts them.
            pub const ALL: [ServiceName; [$( stringify!($variant) ),+].len()] =
                [$( ServiceName::$variant ),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $( ServiceName::$variant => <$server as Server>::NAME ),+
                }
            }

            pub(crate) fn migrations(self) -> ServiceMigrations {
                match self {
                    $( ServiceName::$variant => <$server as Server>::MIGRATIONS ),+
                }
            }

            /// Auth: no session guard in front of it.
            pub(crate) fn answers_session_checks(self) -> bool {
                match self {
                    $( ServiceName::$variant => <$server as Server>::ANSWERS_SESSION_CHECKS ),+
                }
            }

            /// Serves gRPC services with health and reflection (every
            /// server but the gateway, which answers HTTP itself).
            pub fn serves_grpc_services(self) -> bool {
                match self {
                    $( ServiceName::$variant => !<$server as Server>::HTTP_FRONT ),+
                }
            }

            pub fn upstream_url(self, args: &ServerArgs) -> Option<&str> {
                match self {
                    $( ServiceName::$variant => <$server as Server>::upstream_url(&args.$field) ),+
                }
            }

            pub fn listen_address(self, args: &ServerArgs) -> SocketAddr {
                match self {
                    $( ServiceName::$variant => <$server as Server>::listen_address(&args.$field) ),+
                }
            }

            pub(crate) async fn create(
                self,
                args: &ServerArgs,
                context: ServerContext,
            ) -> Result<ServiceSet, SetupError> {
                match self {
                    $( ServiceName::$variant => <$server as Server>::create(&args.$field, context).await ),+
                }
            }
        }

        /// Every server's own flags, flattened into `serve` and `up`.
        #[derive(clap::Args, Clone, Debug)]
        pub struct ServerArgs {
            $(
                #[command(flatten)]
                pub $field: <$server as Server>::Args,
            )+
        }

        impl ServerArgs {
            /// Checks every server's flags, served or not: `serve` parses
            /// them all, so a wrong one is wrong whichever server it names.
            pub(crate) fn validate(&self, jwt: &JwtArgs) -> Result<(), ConfigError> {
                $( <$server as Server>::validate(&self.$field, jwt)?; )+
                Ok(())
            }
        }
    };
}

servers! {
    auth: Auth => trellis_auth::AuthServer,
    session: Session => trellis_session::SessionServer,
    cart: Cart => trellis_cart::CartServer,
    order: Order => trellis_order::OrderServer,
    execution: Execution => trellis_execution::ExecutionServer,
    gateway: Gateway => trellis_gateway::GatewayServer,
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    #[test]
    fn the_name_operators_type_is_the_servers_own() {
        for service in ServiceName::ALL {
            let typed = service.to_possible_value().unwrap();
            assert_eq!(typed.get_name(), service.as_str());
            assert_eq!(service.migrations().service, service.as_str());
        }
        assert_eq!(ServiceName::value_variants(), ServiceName::ALL);
    }

    #[test]
    fn no_two_flags_clash() {
        // clap checks ids and long names only in debug builds, and only for
        // the subcommand being parsed: check every one here.
        <crate::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
