drop function if exists arreglame_rollout_bucket(uuid);
