mod bad_input;
mod crash;
mod delivery;
mod folder;
mod normalization;
mod quarantine;
mod refusal;
