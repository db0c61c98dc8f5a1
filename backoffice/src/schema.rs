//! The diesel schema, one for both backends (see migrations/sqlite and migrations/postgres).

diesel::table! {
    admins (id) {
        id -> Text,
        email -> Text,
        password_hash -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    accounts (id) {
        id -> Text,
        name -> Text,
        lock_version -> BigInt,
        created_at -> BigInt,
    }
}

diesel::table! {
    users (id) {
        id -> Text,
        account_id -> Text,
        email -> Text,
        password_hash -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    sessions (token_hash) {
        token_hash -> Text,
        admin_id -> Nullable<Text>,
        user_id -> Nullable<Text>,
        account_id -> Nullable<Text>,
        csrf_token -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
    }
}

diesel::table! {
    products (id) {
        id -> Text,
        name -> Text,
        version -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    features (id) {
        id -> Text,
        product_id -> Text,
        name -> Text,
        version -> Text,
    }
}

diesel::table! {
    entitlements (id) {
        id -> Text,
        account_id -> Text,
        name -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    line_items (id) {
        id -> Text,
        entitlement_id -> Text,
        account_id -> Text,
        activation_id -> Text,
        product_id -> Text,
        quantity -> BigInt,
        starts_at -> BigInt,
        expires_at -> Nullable<BigInt>,
        created_at -> BigInt,
        max_borrow_secs -> Nullable<BigInt>,
        overdraft -> BigInt,
    }
}

diesel::table! {
    device_tokens (id) {
        id -> Text,
        account_id -> Text,
        name -> Text,
        secret_hash -> Text,
        created_at -> BigInt,
        expires_at -> Nullable<BigInt>,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    servers (id) {
        id -> Text,
        account_id -> Text,
        hostid -> Text,
        role -> Text,
        pair_id -> Nullable<Text>,
        state -> Text,
        first_contact_at -> Nullable<BigInt>,
        last_contact_at -> Nullable<BigInt>,
        reported_status -> Nullable<Text>,
        reported_pair_status -> Nullable<Text>,
        usage_json -> Nullable<Text>,
        last_sample_at -> Nullable<BigInt>,
        created_at -> BigInt,
        server_key -> Nullable<Text>,
        server_key_id -> Nullable<Text>,
        cluster_id -> Nullable<Text>,
        reported_cluster_status -> Nullable<Text>,
    }
}

diesel::table! {
    clusters (id) {
        id -> Text,
        account_id -> Text,
        holder_server_id -> Text,
        registered_by -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    pairs (id) {
        id -> Text,
        account_id -> Text,
        main_server_id -> Text,
        backup_server_id -> Nullable<Text>,
        registered_by -> Text,
        created_at -> BigInt,
        pair_token -> Nullable<Text>,
    }
}

diesel::table! {
    mappings (id) {
        id -> Text,
        account_id -> Text,
        line_item_id -> Text,
        server_id -> Text,
        quantity -> BigInt,
        created_at -> BigInt,
    }
}

diesel::table! {
    seen_requests (request_id) {
        request_id -> Text,
        seen_at -> BigInt,
    }
}

diesel::table! {
    usage_samples (id) {
        id -> Text,
        server_id -> Text,
        feature -> Text,
        version -> Text,
        count -> BigInt,
        in_use -> BigInt,
        sampled_at -> BigInt,
    }
}

diesel::table! {
    usage_intervals (id) {
        id -> Text,
        account_id -> Text,
        server_id -> Text,
        served_by -> Text,
        feature -> Text,
        version -> Text,
        starts_at -> BigInt,
        ends_at -> BigInt,
        served_from -> BigInt,
        served_until -> BigInt,
        count -> BigInt,
        peak -> BigInt,
        seat_secs -> BigInt,
        grants -> BigInt,
        denials -> Text,
        true_denials -> BigInt,
        borrowed -> BigInt,
        overdraft -> BigInt,
        queued -> BigInt,
        received_at -> BigInt,
    }
}

diesel::joinable!(users -> accounts (account_id));
diesel::joinable!(features -> products (product_id));
diesel::joinable!(line_items -> products (product_id));
diesel::joinable!(line_items -> entitlements (entitlement_id));
diesel::joinable!(mappings -> line_items (line_item_id));
diesel::joinable!(mappings -> servers (server_id));

diesel::allow_tables_to_appear_in_same_query!(
    admins,
    accounts,
    users,
    sessions,
    products,
    features,
    entitlements,
    line_items,
    device_tokens,
    servers,
    pairs,
    clusters,
    mappings,
    seen_requests,
    usage_samples,
    usage_intervals,
);
