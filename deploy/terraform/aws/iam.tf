# The masters may read, write, delete and list objects under the backup
# prefix of this cluster (s3://<bucket>/<cluster>/backups/etcd/), nothing
# else: no other bucket, no other prefix, no bucket configuration.
data "aws_iam_policy_document" "assume_ec2" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "backups" {
  statement {
    sid       = "ListBackupPrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.backups.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [local.backup_prefix, "${local.backup_prefix}/*"]
    }
  }

  statement {
    sid = "ReadWriteBackupPrefix"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
    ]
    resources = ["${aws_s3_bucket.backups.arn}/${local.backup_prefix}/*"]
  }
}

resource "aws_iam_role" "master" {
  name               = "${local.name}-master"
  assume_role_policy = data.aws_iam_policy_document.assume_ec2.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "backups" {
  name   = "etcd-manager-backups"
  role   = aws_iam_role.master.id
  policy = data.aws_iam_policy_document.backups.json
}

resource "aws_iam_instance_profile" "master" {
  name = "${local.name}-master"
  role = aws_iam_role.master.name
  tags = local.tags
}
