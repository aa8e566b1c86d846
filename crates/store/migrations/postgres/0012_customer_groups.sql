-- The customer's group, which withdrawal policy rules match on (`when.groups`): `retail` until staff put the
-- customer in another (`PUT /v1/withdrawals/customers/{id}/group`, audited).
ALTER TABLE customers ADD COLUMN policy_group TEXT NOT NULL DEFAULT 'retail';
