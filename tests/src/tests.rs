mod bad_input;
mod crash;
mod damage;
mod delivery;
mod folder;
mod normalization;
mod quarantine;
mod refusal;
