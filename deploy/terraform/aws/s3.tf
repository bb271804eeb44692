resource "aws_s3_bucket" "backups" {
  bucket = var.bucket_name
  tags   = local.tags

  # The bucket holds every backup and the marker that a cluster exists.
  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_s3_bucket_public_access_block" "backups" {
  bucket                  = aws_s3_bucket.backups.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "backups" {
  bucket = aws_s3_bucket.backups.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "backups" {
  bucket = aws_s3_bucket.backups.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "aws:kms"
    }
    bucket_key_enabled = true
  }
}

# Versioning: an object deleted or overwritten by mistake (the spec, the
# control/etcd-cluster-created marker, a backup) stays recoverable as a
# noncurrent version for noncurrent_version_days.
resource "aws_s3_bucket_versioning" "backups" {
  bucket = aws_s3_bucket.backups.id
  versioning_configuration {
    status = "Enabled"
  }
}

# Lifecycle rules that can never touch control/.
#
# control/etcd-cluster-created must never be deleted: without it (and without
# a restore) a manager would seed a new empty cluster; an S3 expiration rule
# did exactly this to upstream users (kopeio/etcd-manager#299). Backups
# cannot be expired by a prefix filter instead: their folders are named by
# timestamp (<base>/2024-01-01T00:00:00Z-000001/) right beside control/ under
# the same base, so no prefix selects the backups without control/. Tag
# filters would need every backup object tagged, which neither upstream nor
# this etcd-manager does. So:
#   * no rule expires current objects: retention of backups is etcd-manager's
#     own (hourly for 7 days, daily for 90 days, --*-backups-retention), and
#     it never deletes control/;
#   * rules act on noncurrent versions only (what is left after an overwrite
#     or delete), which never removes the current version of any object;
#   * delete markers with no versions left behind are cleaned up, and so are
#     abandoned multipart uploads.
resource "aws_s3_bucket_lifecycle_configuration" "backups" {
  bucket = aws_s3_bucket.backups.id

  # Lease records are written every few seconds and garbage-collected at
  # once; keep their old versions one day only.
  rule {
    id     = "lease-records-noncurrent"
    status = "Enabled"

    filter {
      prefix = "${local.backup_prefix}/${var.etcd_cluster_name}/etcd-manager/lease/"
    }

    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  rule {
    id     = "noncurrent-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }

    # Only removes a delete marker whose object has no version left: never
    # a current object.
    expiration {
      expired_object_delete_marker = true
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.backups]
}
