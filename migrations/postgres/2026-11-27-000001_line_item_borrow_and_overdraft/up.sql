-- A line item's borrow policy and overdraft, carried in the signed rights: a client may
-- borrow seats for at most max_borrow_secs (NULL: the line item is not borrowable), and a
-- server may grant up to overdraft seats beyond the count once it is used up (0: none).
-- Keep sqlite/ and postgres/ in step.
ALTER TABLE line_items ADD COLUMN max_borrow_secs BIGINT;
ALTER TABLE line_items ADD COLUMN overdraft BIGINT NOT NULL DEFAULT 0;
