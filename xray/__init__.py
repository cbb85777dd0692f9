"""xray-transfer's library: the machinery under the stages (tasks/) and the flow (flows/),
one folder per layer."""
