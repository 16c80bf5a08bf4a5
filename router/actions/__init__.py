"""Action types: what a rule does with a record. One module per type (http, email, log), each
holding everything its type means (router.actions.base says what that is); the registry
(router.actions.registry) finds them by name for every part of the router that needs them."""
