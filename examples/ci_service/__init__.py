"""A slice of a CI-integration service: match check runs to the pull requests behind them."""
