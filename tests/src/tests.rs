mod bad_input;
mod crash;
mod delivery;
mod refusal;
